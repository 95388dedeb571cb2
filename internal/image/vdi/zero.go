package vdi

import (
	"fmt"

	"vdisk/internal/blockdev"
)

// Bounds of one Extents call: the extents it returns and the blocks it
// looks at.
const (
	maxExtents      = 4096
	maxExtentBlocks = 1 << 16
)

// Trim makes [off, off+n) read as zeroes and releases the storage of the
// allocated part (see WriteZeroes).
func (img *Image) Trim(off, n int64) error { return img.WriteZeroes(off, n, true) }

// WriteZeroes makes [off, off+n) read as zeroes. Unallocated blocks
// already do; allocated ranges are punched (mayTrim) or zeroed in place
// with fallocate, or written with zeroes where the file system cannot.
// Blocks stay allocated, so the block map never changes here.
func (img *Image) WriteZeroes(off, n int64, mayTrim bool) error {
	if err := img.check(off, n); err != nil {
		return err
	}
	if img.readOnly {
		return blockdev.ErrReadOnly
	}
	for end := off + n; off < end; {
		c := min(end-off, img.bs-off%img.bs)
		img.mu.Lock()
		fo := img.fileOffset(off)
		img.mu.Unlock()
		if fo >= 0 {
			if err := img.zeroFile(fo, c, mayTrim); err != nil {
				return err
			}
		}
		off += c
	}
	return nil
}

// zeroFile zeroes n bytes of the file at off.
func (img *Image) zeroFile(off, n int64, mayTrim bool) error {
	if err := blockdev.ZeroFileRange(img.f, off, n, mayTrim); err != nil {
		return fmt.Errorf("vdi: zero at %#x: %w", off, err)
	}
	return nil
}

// Extents describes [off, off+n): unallocated and discarded blocks, and
// holes of the file inside allocated blocks, read as zeroes; the rest is
// data.
func (img *Image) Extents(off, n int64) ([]blockdev.Extent, error) {
	if err := img.check(off, n); err != nil {
		return nil, err
	}
	var out []blockdev.Extent
	add := func(o, l int64, f blockdev.ExtentFlags) { out = blockdev.AppendExtent(out, o, l, f) }
	for end, seen := off+n, 0; off < end && len(out) < maxExtents && seen < maxExtentBlocks; seen++ {
		c := min(end-off, img.bs-off%img.bs)
		img.mu.Lock()
		fo := img.fileOffset(off)
		img.mu.Unlock()
		if fo < 0 {
			add(off, c, blockdev.ExtentHole|blockdev.ExtentZero)
		} else {
			blockdev.FileExtents(img.f, fo, c, off, add)
		}
		off += c
	}
	return out, nil
}
