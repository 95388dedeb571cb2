package vdi

import (
	"errors"

	"golang.org/x/sys/unix"

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
	mode := uint32(unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE)
	if mayTrim {
		mode = unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE
	}
	err := unix.Fallocate(int(img.f.Fd()), mode, off, n)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) {
		return err
	}
	zero := make([]byte, min(n, 1<<20))
	for n > 0 {
		c := min(n, int64(len(zero)))
		if err := img.pwrite(zero[:c], off); err != nil {
			return err
		}
		off += c
		n -= c
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
	add := func(o, l int64, f blockdev.ExtentFlags) {
		if k := len(out); k > 0 && out[k-1].Flags == f && out[k-1].Off+out[k-1].Len == o {
			out[k-1].Len += l
			return
		}
		out = append(out, blockdev.Extent{Off: o, Len: l, Flags: f})
	}
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
