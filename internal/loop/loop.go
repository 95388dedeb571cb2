// Package loop attaches files to Linux loop devices (/dev/loopN) and
// detaches them again: the raw-file attach path of vdisk, and the last step
// of the FUSE path (a loop device over the FUSE export's file).
//
// Attach asks /dev/loop-control for a free device (LOOP_CTL_GET_FREE) and
// binds the caller's open file to it in one LOOP_CONFIGURE ioctl, so the
// device never appears half configured. Device nodes missing under /dev (a
// container without udev) are created with mknod.
//
// All functions are safe to call from many goroutines and processes: the
// kernel arbitrates, and Attach retries when another attacher wins a race
// for the same free device.
package loop

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// maxAttachAttempts bounds how often Attach asks for another free device
// after losing a race for one (LOOP_CONFIGURE answering EBUSY).
const maxAttachAttempts = 32

// Options says how to attach a file.
type Options struct {
	// ReadOnly attaches the device read-only (LO_FLAGS_READ_ONLY). A file
	// opened without write access is always attached read-only.
	ReadOnly bool
	// DirectIO asks the loop driver to do direct I/O on the backing file
	// (LO_FLAGS_DIRECT_IO), bypassing its page cache. When the file system
	// or the block size does not allow it, the kernel attaches the file
	// buffered; Device.DirectIO reports which one happened.
	DirectIO bool
	// PartScan makes the kernel scan the device for partitions
	// (LO_FLAGS_PARTSCAN), creating /dev/loopNpM.
	PartScan bool
	// BlockSize is the device's logical block size (512, 1024, 2048 or
	// 4096). Zero lets the kernel choose: 512, or the backing device's
	// logical block size when direct I/O needs it.
	BlockSize uint32
}

// Validate checks the options.
func (o *Options) Validate() error {
	switch o.BlockSize {
	case 0, 512, 1024, 2048, 4096:
		return nil
	}
	return fmt.Errorf("loop: block size %d: want 512, 1024, 2048 or 4096", o.BlockSize)
}

// Device describes one loop device and, when attached, its backing file.
// It is a snapshot: Lookup returns a fresh one. A Device holds no open
// file; its methods act on the device node by path and number.
type Device struct {
	// Path is the device node, e.g. /dev/loop3.
	Path string
	// Number is N in /dev/loopN.
	Number int
	// Major and Minor are the block device number.
	Major, Minor uint32
	// BackingFile is the backing file's path as the kernel reports it
	// (sysfs loop/backing_file; " (deleted)" when it was unlinked).
	BackingFile string
	// BackingDev and BackingInode identify the backing file (st_dev and
	// st_ino, as LOOP_GET_STATUS64 reports them).
	BackingDev, BackingInode uint64
	// Offset and SizeLimit are the window of the file the device shows
	// (0 and 0 for the whole file).
	Offset, SizeLimit uint64
	// Size is the device's size in bytes.
	Size int64
	// BlockSize is the logical block size in bytes.
	BlockSize uint32
	// ReadOnly, DirectIO, PartScan and AutoClear mirror the device's
	// LO_FLAGS_* flags.
	ReadOnly, DirectIO, PartScan, AutoClear bool
}

// String returns the device path.
func (d *Device) String() string { return d.Path }

// Attach binds f to a free loop device and returns the device's state. The
// device keeps its own reference to the open file: the caller may close f
// afterwards, and keeps any lock it holds on it. Autoclear is off: the
// device stays attached until Detach or DetachLazy.
func Attach(f *os.File, opt Options) (*Device, error) {
	if err := opt.Validate(); err != nil {
		return nil, err
	}
	ctl, err := openControl()
	if err != nil {
		return nil, fmt.Errorf("loop: %w", err)
	}
	defer ctl.Close()

	var flags uint32
	if opt.ReadOnly {
		flags |= unix.LO_FLAGS_READ_ONLY
	}
	if opt.PartScan {
		flags |= unix.LO_FLAGS_PARTSCAN
	}
	if opt.DirectIO {
		flags |= unix.LO_FLAGS_DIRECT_IO
	}
	for range maxAttachAttempts {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			if errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOSPC) {
				return nil, fmt.Errorf("loop: %w: %w", ErrNoFreeDevice, err)
			}
			return nil, fmt.Errorf("loop: get free device: %w", err)
		}
		d, err := configure(n, f, flags, opt)
		if errors.Is(err, unix.EBUSY) {
			continue // another attacher took device n first
		}
		if err != nil {
			return nil, fmt.Errorf("loop: attach %s to %s: %w", f.Name(), devPath(n), err)
		}
		return d, nil
	}
	return nil, fmt.Errorf("loop: %w: lost the race for a free device %d times", ErrNoFreeDevice, maxAttachAttempts)
}

// configure binds f to loop device n with LOOP_CONFIGURE.
func configure(n int, f *os.File, flags uint32, opt Options) (*Device, error) {
	if err := ensureDevNode(n); err != nil {
		return nil, err
	}
	mode := os.O_RDWR
	if opt.ReadOnly {
		mode = os.O_RDONLY
	}
	dev, err := os.OpenFile(devPath(n), mode|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer dev.Close()
	cfg := unix.LoopConfig{Fd: uint32(f.Fd()), Size: opt.BlockSize}
	cfg.Info.Flags = flags
	copy(cfg.Info.File_name[:len(cfg.Info.File_name)-1], f.Name())
	// A kernel that cannot do direct I/O on this file (no O_DIRECT in its
	// file system, or a block size below the file system's alignment)
	// attaches it buffered and clears the flag; lookup reads back what it
	// did.
	if err := unix.IoctlLoopConfigure(int(dev.Fd()), &cfg); err != nil {
		return nil, err
	}
	runtime.KeepAlive(f)
	d, err := lookup(n, dev)
	if err != nil {
		// Do not leave a device attached that the caller cannot know of.
		if cerr := clearFD(dev); cerr != nil {
			return nil, fmt.Errorf("%w (and detaching it again: %w)", err, cerr)
		}
		return nil, err
	}
	return d, nil
}
