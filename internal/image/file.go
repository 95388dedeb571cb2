package image

import (
	"fmt"

	"vdisk/internal/blockdev"
)

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
