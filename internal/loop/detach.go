package loop

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Detach unbinds the backing file from the device now. A device that is
// mounted, held by another driver or open in another process is left
// attached, and Detach returns an error wrapping ErrBusy.
//
// The device's dirty pages are written to the backing file before it is
// unbound; making them durable (fsync of the backing file) is the job of
// whoever holds that file.
func (d *Device) Detach() error {
	// O_EXCL fails with EBUSY while the device is mounted or claimed, and
	// keeps anyone from mounting it while we work.
	f, err := os.OpenFile(d.Path, os.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("loop: detach %s: %w (mounted or in use)", d.Path, ErrBusy)
	}
	if err != nil {
		return fmt.Errorf("loop: detach %s: %w", d.Path, err)
	}
	defer f.Close() // the last close does the detach
	before, err := unix.IoctlLoopGetStatus64(int(f.Fd()))
	if errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("loop: detach %s: %w", d.Path, ErrNotAttached)
	}
	if err != nil {
		return fmt.Errorf("loop: detach %s: get status: %w", d.Path, err)
	}
	err = clearFD(f)
	if errors.Is(err, unix.EBUSY) { // kernels before 5.x refuse outright
		return fmt.Errorf("loop: detach %s: %w (open elsewhere)", d.Path, ErrBusy)
	}
	if err != nil {
		return fmt.Errorf("loop: detach %s: %w", d.Path, err)
	}
	// Current kernels never refuse LOOP_CLR_FD: with other openers they
	// set autoclear and keep the device bound; if we were the only opener
	// the device is already running down and status reads ENXIO. Undo the
	// autoclear of a busy device so Detach never detaches lazily.
	after, err := unix.IoctlLoopGetStatus64(int(f.Fd()))
	if errors.Is(err, unix.ENXIO) {
		return nil // detached when f is closed, below
	}
	if err != nil {
		return fmt.Errorf("loop: detach %s: get status: %w", d.Path, err)
	}
	after.Flags = after.Flags&^unix.LO_FLAGS_AUTOCLEAR | before.Flags&unix.LO_FLAGS_AUTOCLEAR
	if err := unix.IoctlLoopSetStatus64(int(f.Fd()), after); err != nil && !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("loop: detach %s: %w (open elsewhere), and restoring its flags: %w", d.Path, ErrBusy, err)
	}
	return fmt.Errorf("loop: detach %s: %w (open elsewhere)", d.Path, ErrBusy)
}

// DetachLazy marks the device to be detached by the kernel when its last
// user closes it (LO_FLAGS_AUTOCLEAR), as `losetup -d` does for a busy
// device. A device nobody uses is detached before DetachLazy returns.
func (d *Device) DetachLazy() error {
	f, err := os.OpenFile(d.Path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("loop: detach %s: %w", d.Path, err)
	}
	defer f.Close() // if we are the last user, this close detaches
	err = clearFD(f)
	if errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("loop: detach %s: %w", d.Path, ErrNotAttached)
	}
	if !errors.Is(err, unix.EBUSY) {
		if err != nil {
			return fmt.Errorf("loop: detach %s: %w", d.Path, err)
		}
		return nil
	}
	// Older kernels refuse LOOP_CLR_FD while others hold the device: ask
	// for autoclear explicitly.
	info, err := unix.IoctlLoopGetStatus64(int(f.Fd()))
	if err != nil {
		return fmt.Errorf("loop: detach %s: get status: %w", d.Path, err)
	}
	info.Flags |= unix.LO_FLAGS_AUTOCLEAR
	if err := unix.IoctlLoopSetStatus64(int(f.Fd()), info); err != nil {
		return fmt.Errorf("loop: detach %s: set autoclear: %w", d.Path, err)
	}
	return nil
}

// clearFD issues LOOP_CLR_FD on the open device f.
func clearFD(f *os.File) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.LOOP_CLR_FD, 0)
	if errno != 0 {
		return errno
	}
	return nil
}
