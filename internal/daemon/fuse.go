package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"vdisk/internal/blockdev"
	"vdisk/internal/fuseexport"
	"vdisk/internal/loop"
)

// The FUSE character device and its number (10:229); the name of the one
// file in each export; where exports are mounted under the run directory.
const (
	fuseDevice   = "/dev/fuse"
	fuseDevMajor = 10
	fuseDevMinor = 229
	fuseFileName = "disk"
	mountDirName = "mnt"
	mountDirMode = 0o700
)

// fuseExport is what the daemon needs of a FUSE export.
type fuseExport interface {
	Path() string
	Resize(size int64) error
	Done() <-chan struct{}
	Close() error
	CloseForce() error
}

var _ fuseExport = (*fuseexport.Export)(nil)

// mountDir is where the FUSE export of disk id is mounted.
func (d *Daemon) mountDir(id string) string {
	return filepath.Join(d.opt.RunDir, mountDirName, id)
}

// checkFUSE returns an error wrapping ErrFUSEUnavailable unless /dev/fuse
// is the FUSE device.
func checkFUSE() error {
	var st unix.Stat_t
	if err := unix.Stat(fuseDevice, &st); err != nil {
		return fmt.Errorf("%w: %s: %v (load the fuse module: modprobe fuse)", ErrFUSEUnavailable, fuseDevice, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(st.Rdev) != fuseDevMajor || unix.Minor(st.Rdev) != fuseDevMinor {
		return fmt.Errorf("%w: %s is not the FUSE device (10:229)", ErrFUSEUnavailable, fuseDevice)
	}
	return nil
}

// passthroughFile returns the image file of a plain raw image (the stack
// is the file itself), for FUSE passthrough; nil for every other stack.
func passthroughFile(dev blockdev.Device) *os.File {
	if f, ok := dev.(*blockdev.File); ok && !f.IsBlockDevice() {
		return f.OS()
	}
	return nil
}

// attachFUSE exports dev as one file in a FUSE mount under the run
// directory and attaches a loop device to that file with direct I/O.
// backing, when not nil, is the raw image file that dev's bytes are: where
// the kernel has FUSE passthrough it serves the loop device's reads and
// writes itself (they are then not in the disk's I/O metrics; flushes and
// discards still are), so the caller passes none when the daemon exports
// metrics (--metrics-listen).
func (d *Daemon) attachFUSE(id string, dev blockdev.Device, backing *os.File, readOnly bool) (fuseExport, *loop.Device, error) {
	if err := checkFUSE(); err != nil {
		return nil, nil, err
	}
	dir := d.mountDir(id)
	if err := os.MkdirAll(dir, mountDirMode); err != nil {
		return nil, nil, fmt.Errorf("create mount point: %w", err)
	}
	exp, err := fuseexport.Mount(dir, dev, fuseexport.Options{Name: fuseFileName, ReadOnly: readOnly, Logger: d.log.With("export", id), Passthrough: backing})
	if err != nil {
		os.Remove(dir)
		return nil, nil, err
	}
	if backing != nil {
		d.log.Info("fuse passthrough", "export", id, "on", exp.Passthrough())
	}
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	// The FUSE file is served by the export's own goroutines, so opening
	// it and the loop device's partition scan cannot wait on us.
	f, err := os.OpenFile(exp.Path(), flag|unix.O_CLOEXEC, 0)
	if err != nil {
		exp.CloseForce()
		os.Remove(dir)
		return nil, nil, fmt.Errorf("open the FUSE file: %w", err)
	}
	defer f.Close()
	l, err := loop.Attach(f, loop.Options{ReadOnly: readOnly, DirectIO: true, PartScan: true, BlockSize: blockdev.InfoOf(dev).LogicalBlockSize})
	if err != nil {
		f.Close()
		exp.CloseForce()
		os.Remove(dir)
		return nil, nil, err
	}
	return exp, l, nil
}

// clearStaleFUSE clears what a dead daemon left of the FUSE disk sd: its
// loop device (over a file nobody serves any more) and its mount. It
// reports whether it found either.
func (d *Daemon) clearStaleFUSE(sd stateDisk) bool {
	found := false
	dir := d.mountDir(sd.ID)
	file := filepath.Join(dir, fuseFileName)
	devs, err := loop.FindByBackingFile(file)
	if err != nil {
		d.log.Warn("find stale loop devices", "file", file, "err", err)
	}
	for _, l := range devs {
		found = true
		if err := l.DetachLazy(); err != nil && !errors.Is(err, loop.ErrNotAttached) {
			d.log.Warn("detach stale loop device", "device", l.Path, "err", err)
		} else {
			d.log.Info("detached stale loop device", "device", l.Path, "file", file)
		}
	}
	if err := unix.Unmount(dir, unix.MNT_DETACH); err == nil {
		found = true
		d.log.Info("unmounted stale FUSE mount", "dir", dir)
	} else if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		d.log.Warn("unmount stale FUSE mount", "dir", dir, "err", err)
	}
	return found
}
