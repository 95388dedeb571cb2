package loop

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// SetCapacity makes the device take the backing file's current size (what
// losetup --set-capacity does), after the file grew or shrank, and
// returns the device's new size. A mounted device may grow this way; the
// file system on it is grown separately (resize2fs).
func (d *Device) SetCapacity() (int64, error) {
	f, err := os.OpenFile(d.Path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("loop: set capacity of %s: %w", d.Path, err)
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_SET_CAPACITY, 0); err != nil {
		return 0, fmt.Errorf("loop: set capacity of %s: %w", d.Path, err)
	}
	var size uint64
	if err := ioctlGetSize(f, &size); err != nil {
		return 0, fmt.Errorf("loop: size of %s: %w", d.Path, err)
	}
	d.Size = int64(size)
	return d.Size, nil
}

// ioctlGetSize reads a block device's size in bytes (BLKGETSIZE64).
func ioctlGetSize(f *os.File, size *uint64) error {
	v, err := unix.IoctlGetUint64(int(f.Fd()), unix.BLKGETSIZE64)
	if err != nil {
		return err
	}
	*size = v
	return nil
}
