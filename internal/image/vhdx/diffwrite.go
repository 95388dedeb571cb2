package vhdx

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"vdisk/internal/blockdev"
)

// maxCachedBitmaps bounds the clean sector bitmap slices kept in memory.
const maxCachedBitmaps = 4096

// bitmapSlice is the part of a chunk's sector bitmap that covers one
// payload block: bit s%8 of byte s/8 is the block's sector s; a set bit
// means the sector is in this file.
type bitmapSlice struct {
	b     []byte
	dirty bool
}

// sliceLen is the bytes of sector bitmap one payload block has.
func (img *Image) sliceLen() int64 { return img.m.blockSize / img.m.lss / 8 }

// bitmapEntry is the BAT index of the sector bitmap of payload block blk.
func (img *Image) bitmapEntry(blk int64) int64 { return blk/img.cr*(img.cr+1) + img.cr }

// sliceOffset is the file offset of payload block blk's bitmap slice.
func (img *Image) sliceOffset(blk int64) int64 {
	return int64(img.bat[img.bitmapEntry(blk)]>>batOffsetShift)*mib + blk%img.cr*img.sliceLen()
}

// bitmap returns payload block blk's bitmap slice, reading it when it is
// not cached. Called with mu held.
func (img *Image) bitmap(blk int64) (*bitmapSlice, error) {
	if sl, ok := img.sbm[blk]; ok {
		return sl, nil
	}
	if img.bat[img.bitmapEntry(blk)]&7 != stateBitmapHere {
		return nil, corruptf("partially present block %d has no sector bitmap", blk)
	}
	if len(img.sbm) >= maxCachedBitmaps {
		for k, v := range img.sbm {
			if !v.dirty {
				delete(img.sbm, k)
			}
		}
	}
	sl := &bitmapSlice{b: make([]byte, img.sliceLen())}
	if _, err := img.f.ReadAt(sl.b, img.sliceOffset(blk)); err != nil {
		return nil, fmt.Errorf("vhdx: read sector bitmap of block %d: %w", blk, err)
	}
	img.sbm[blk] = sl
	return sl, nil
}

// writeBitmaps writes the dirty bitmap slices and returns how many. Called
// with mu held.
func (img *Image) writeBitmaps() (int, error) {
	n := 0
	for blk, sl := range img.sbm {
		if !sl.dirty {
			continue
		}
		if _, err := img.f.WriteAt(sl.b, img.sliceOffset(blk)); err != nil {
			return n, fmt.Errorf("vhdx: write sector bitmap of block %d: %w", blk, err)
		}
		sl.dirty = false
		n++
	}
	return n, nil
}

// grow takes n bytes (whole MiB) at the end of the file, extended sparse,
// and returns their offset. Called with mu held.
func (img *Image) grow(n int64) (int64, error) {
	start := img.fileEnd
	if err := img.f.Truncate(start + n); err != nil {
		if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EFBIG) {
			return 0, fmt.Errorf("vhdx: allocate: %w", blockdev.ErrNoSpace)
		}
		return 0, fmt.Errorf("vhdx: allocate: %w", err)
	}
	img.fileEnd = start + n
	return start, nil
}

// setEntry changes BAT entry i. Called with mu held.
func (img *Image) setEntry(i int64, off int64, state uint64) {
	img.bat[i] = uint64(off/mib)<<batOffsetShift | state
	img.batDirty[i*8/4096] = true
}

// writeDiff writes b at guest offset pos, inside one payload block of a
// differencing disk. Sectors already in the file are written in place;
// a block without data gets a partially present block (and its chunk a
// sector bitmap block when it has none), and each sector written the first
// time is completed from the parent and marked in the bitmap. A zero block
// becomes a fully present one, zeroed. It runs under mu.
func (img *Image) writeDiff(b []byte, pos int64) error {
	img.mu.Lock()
	defer img.mu.Unlock()
	if err := img.touch(); err != nil {
		return err
	}
	bs, lss := img.m.blockSize, img.m.lss
	blk := pos / bs
	i := img.payloadIndex(blk)
	switch img.bat[i] & 7 {
	case stateFullPresent, statePartPresent:
	case stateZero:
		off, err := img.grow(bs)
		if err != nil {
			return err
		}
		img.setEntry(i, off, stateFullPresent)
	default: // the parent's data
		if bi := img.bitmapEntry(blk); img.bat[bi]&7 != stateBitmapHere {
			off, err := img.grow(mib)
			if err != nil {
				return err
			}
			img.setEntry(bi, off, stateBitmapHere)
			for k := blk / img.cr * img.cr; k < (blk/img.cr+1)*img.cr; k++ {
				delete(img.sbm, k)
			}
		}
		off, err := img.grow(bs)
		if err != nil {
			return err
		}
		img.setEntry(i, off, statePartPresent)
		img.sbm[blk] = &bitmapSlice{b: make([]byte, img.sliceLen()), dirty: true}
	}
	e := img.bat[i]
	base := int64(e>>batOffsetShift) * mib
	in0 := pos % bs
	if e&7 == stateFullPresent {
		return img.pwrite(b, base+in0)
	}
	sl, err := img.bitmap(blk)
	if err != nil {
		return err
	}
	has := func(s int64) bool { return sl.b[s/8]&(1<<(s%8)) != 0 }
	for at := int64(0); at < int64(len(b)); {
		s := (in0 + at) / lss
		in := has(s)
		end := min(int64(len(b)), (s+1)*lss-in0)
		for end < int64(len(b)) && has((in0+end)/lss) == in {
			end = min(int64(len(b)), end+lss)
		}
		if in {
			if err := img.pwrite(b[at:end], base+in0+at); err != nil {
				return err
			}
			at = end
			continue
		}
		// Whole sectors, the partial ones at the edges completed from
		// the parent, then their bits.
		lo := (in0 + at) / lss * lss
		hi := (in0 + end + lss - 1) / lss * lss
		buf := make([]byte, hi-lo)
		if lo < in0+at {
			if err := img.readParent(buf[:lss], blk*bs+lo); err != nil {
				return err
			}
		}
		if hi > in0+end {
			if err := img.readParent(buf[hi-lo-lss:], blk*bs+hi-lss); err != nil {
				return err
			}
		}
		copy(buf[in0+at-lo:], b[at:end])
		if err := img.pwrite(buf, base+lo); err != nil {
			return err
		}
		for x := lo / lss; x < hi/lss; x++ {
			sl.b[x/8] |= 1 << (x % 8)
		}
		sl.dirty = true
		at = end
	}
	return nil
}

// pwrite writes b at file offset off.
func (img *Image) pwrite(b []byte, off int64) error {
	if _, err := img.f.WriteAt(b, off); err != nil {
		return fmt.Errorf("vhdx: write at %#x: %w", off, err)
	}
	return nil
}
