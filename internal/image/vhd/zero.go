package vhd

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

// WriteZeroes makes [off, off+n) read as zeroes. In a dynamic disk an
// unallocated block already does; an allocated range is punched (mayTrim)
// or zeroed in place with fallocate, or written with zeroes where the file
// system cannot. A differencing disk writes zeroes through WriteAt, since a
// hole there would show the parent.
func (img *Image) WriteZeroes(off, n int64, mayTrim bool) error {
	if err := img.check(off, n); err != nil {
		return err
	}
	if img.readOnly {
		return blockdev.ErrReadOnly
	}
	if img.diff {
		return blockdev.WriteZeroesByWriting(img, off, n)
	}
	for end := off + n; off < end; {
		blk := off / img.blockSize
		c := min(end-off, (blk+1)*img.blockSize-off)
		img.mu.Lock()
		segs, err := img.segments(blk, off, c)
		img.mu.Unlock()
		if err != nil {
			return err
		}
		if s := segs[0]; s.file >= 0 {
			if err := img.zeroFile(s.file, s.n, mayTrim); err != nil {
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
		return fmt.Errorf("vhd: zero at %#x: %w", off, err)
	}
	return nil
}

// Extents describes [off, off+n): an unallocated block of a dynamic disk
// is a hole that reads as zeroes; in a differencing disk it has the
// parent's extents (holes past the parent's end); allocated blocks are
// data.
func (img *Image) Extents(off, n int64) ([]blockdev.Extent, error) {
	if err := img.check(off, n); err != nil {
		return nil, err
	}
	var out []blockdev.Extent
	add := func(o, l int64, f blockdev.ExtentFlags) { out = blockdev.AppendExtent(out, o, l, f) }
	for end, seen := off+n, 0; off < end && len(out) < maxExtents && seen < maxExtentBlocks; seen++ {
		blk := off / img.blockSize
		c := min(end-off, (blk+1)*img.blockSize-off)
		img.mu.Lock()
		allocated := img.bat[blk] != batUnused
		img.mu.Unlock()
		switch {
		case allocated:
			add(off, c, 0)
		case img.parent == nil:
			add(off, c, blockdev.ExtentHole|blockdev.ExtentZero)
		default:
			if err := img.parentExtents(off, c, add); err != nil {
				return nil, err
			}
		}
		off += c
	}
	return out, nil
}

// parentExtents adds the parent's extents of [off, off+n), marked as holes
// of this image.
func (img *Image) parentExtents(off, n int64, add func(o, l int64, f blockdev.ExtentFlags)) error {
	end := off + n
	for pend := min(end, img.parent.Size()); off < pend; {
		ext, err := blockdev.Extents(img.parent, off, pend-off)
		if err != nil {
			return err
		}
		for _, e := range ext {
			add(e.Off, e.Len, e.Flags|blockdev.ExtentHole)
			off = e.Off + e.Len
		}
	}
	if off < end {
		add(off, end-off, blockdev.ExtentHole|blockdev.ExtentZero)
	}
	return nil
}
