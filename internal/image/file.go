package image

import (
	"fmt"
	"os"

	"vdisk/internal/blockdev"
)

// OpenPath opens a file of an image in format for Open: read-write unless
// opt.ReadOnly, and locked as blockdev.LockFile locks (shared for readers)
// unless opt.NoLock. Errors name the format; on error nothing stays open.
func OpenPath(format, path string, opt OpenOptions) (*os.File, error) {
	flag := os.O_RDWR
	if opt.ReadOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("%s: open: %w", format, err)
	}
	if !opt.NoLock {
		if err := blockdev.LockFile(f, opt.ReadOnly); err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: %w", format, err)
		}
	}
	return f, nil
}

// ReadParent fills b with what the backing (parent) image of a layered
// image holds at off: its bytes, zeroes past its end, and zeroes
// everywhere when parent is nil (no backing file, or opened without it).
func ReadParent(parent blockdev.Device, b []byte, off int64) error {
	n := int64(0)
	if parent != nil {
		n = max(0, min(int64(len(b)), parent.Size()-off))
	}
	if n > 0 {
		if _, err := parent.ReadAt(b[:n], off); err != nil {
			return fmt.Errorf("read backing file at %d: %w", off, err)
		}
	}
	clear(b[n:])
	return nil
}
