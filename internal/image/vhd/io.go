package vhd

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// seg is a piece of a request inside one block: where its bytes come from.
type seg struct {
	off, n int64 // guest range
	file   int64 // file offset of the data; -1 when it is not in this file
}

// segments returns where the guest range [off, off+n) inside block blk
// lives. Called with mu held.
func (img *Image) segments(blk, off, n int64) ([]seg, error) {
	e := img.bat[blk]
	if e == batUnused {
		return []seg{{off, n, -1}}, nil
	}
	base := int64(e)*sectorSize + img.bitmapSize - blk*img.blockSize
	if !img.diff {
		return []seg{{off, n, base + off}}, nil
	}
	bm, err := img.bitmap(blk)
	if err != nil {
		return nil, err
	}
	var out []seg
	for pos, end := off, off+n; pos < end; {
		s := (pos - blk*img.blockSize) / sectorSize
		in := bm.has(s)
		stop := min(end, blk*img.blockSize+(s+1)*sectorSize)
		for stop < end && bm.has((stop-blk*img.blockSize)/sectorSize) == in {
			stop = min(end, stop+sectorSize)
		}
		sg := seg{pos, stop - pos, -1}
		if in {
			sg.file = base + pos
		}
		out = append(out, sg)
		pos = stop
	}
	return out, nil
}

// bitmap returns block blk's sector bitmap, reading it when it is not
// cached. Called with mu held.
func (img *Image) bitmap(blk int64) (*bitmap, error) {
	if bm, ok := img.bitmaps[blk]; ok {
		return bm, nil
	}
	if len(img.bitmaps) >= maxCachedBitmaps {
		for k, v := range img.bitmaps {
			if !v.dirty {
				delete(img.bitmaps, k)
			}
		}
	}
	bm := &bitmap{b: make([]byte, img.bitmapSize)}
	if _, err := img.f.ReadAt(bm.b, int64(img.bat[blk])*sectorSize); err != nil {
		return nil, fmt.Errorf("vhd: read sector bitmap of block %d: %w", blk, err)
	}
	img.bitmaps[blk] = bm
	return bm, nil
}

// check refuses calls after Close and ranges outside the disk.
func (img *Image) check(off, n int64) error {
	img.mu.Lock()
	closed := img.closed
	img.mu.Unlock()
	if closed {
		return blockdev.ErrClosed
	}
	return blockdev.CheckRange(off, n, img.size)
}

// ReadAt reads len(p) bytes at off.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	if err := img.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		blk := pos / img.blockSize
		n := min(int64(len(p)-done), (blk+1)*img.blockSize-pos)
		img.mu.Lock()
		segs, err := img.segments(blk, pos, n)
		img.mu.Unlock()
		if err != nil {
			return done, err
		}
		for _, s := range segs {
			if err := img.readSeg(p[s.off-off:s.off-off+s.n], s); err != nil {
				return done, err
			}
		}
		done += int(n)
	}
	return done, nil
}

// readSeg fills b with the segment s.
func (img *Image) readSeg(b []byte, s seg) error {
	if s.file >= 0 {
		if _, err := img.f.ReadAt(b, s.file); err != nil {
			return fmt.Errorf("vhd: read data at %#x: %w", s.file, err)
		}
		return nil
	}
	return img.readParent(b, s.off)
}

// readParent fills b with the parent's bytes at off (zeroes without a
// parent, and beyond its end).
func (img *Image) readParent(b []byte, off int64) error {
	if err := image.ReadParent(img.parent, b, off); err != nil {
		return fmt.Errorf("vhd: %w", err)
	}
	return nil
}

// WriteAt writes len(p) bytes at off, allocating blocks as needed.
func (img *Image) WriteAt(p []byte, off int64) (int, error) {
	if err := img.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	if img.readOnly {
		return 0, blockdev.ErrReadOnly
	}
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		blk := pos / img.blockSize
		n := min(int64(len(p)-done), (blk+1)*img.blockSize-pos)
		if err := img.writeBlock(p[done:done+int(n)], blk, pos); err != nil {
			return done, err
		}
		done += int(n)
	}
	return done, nil
}

// writeBlock writes b at guest offset pos, inside block blk.
func (img *Image) writeBlock(b []byte, blk, pos int64) error {
	img.mu.Lock()
	if img.bat[blk] == batUnused {
		if err := img.allocate(blk); err != nil {
			img.mu.Unlock()
			return err
		}
	}
	segs, err := img.segments(blk, pos, int64(len(b)))
	if err != nil {
		img.mu.Unlock()
		return err
	}
	if len(segs) == 1 && segs[0].file >= 0 {
		img.mu.Unlock()
		return img.pwrite(b, segs[0].file)
	}
	defer img.mu.Unlock()
	// A differencing disk whose bitmap must change: sectors already in the
	// file are written as they are; the others get whole sectors, the
	// edges filled from the parent, and then their bits.
	base := int64(img.bat[blk])*sectorSize + img.bitmapSize - blk*img.blockSize
	bm := img.bitmaps[blk]
	for _, s := range segs {
		part := b[s.off-pos : s.off-pos+s.n]
		if s.file >= 0 {
			if err := img.pwrite(part, s.file); err != nil {
				return err
			}
			continue
		}
		lo := s.off &^ (sectorSize - 1)
		hi := (s.off + s.n + sectorSize - 1) &^ (sectorSize - 1)
		buf := make([]byte, hi-lo)
		if lo < s.off {
			if err := img.readParent(buf[:sectorSize], lo); err != nil {
				return err
			}
		}
		if hi > s.off+s.n {
			if err := img.readParent(buf[hi-lo-sectorSize:], hi-sectorSize); err != nil {
				return err
			}
		}
		copy(buf[s.off-lo:], part)
		if err := img.pwrite(buf, base+lo); err != nil {
			return err
		}
		for x := lo; x < hi; x += sectorSize {
			bm.set((x - blk*img.blockSize) / sectorSize)
		}
		bm.dirty = true
	}
	return nil
}

// pwrite writes b at file offset off.
func (img *Image) pwrite(b []byte, off int64) error {
	if _, err := img.f.WriteAt(b, off); err != nil {
		if errors.Is(err, unix.ENOSPC) {
			return fmt.Errorf("vhd: write data at %#x: %w", off, blockdev.ErrNoSpace)
		}
		return fmt.Errorf("vhd: write data at %#x: %w", off, err)
	}
	return nil
}

// allocate gives block blk space at the end of the file. Its bitmap (all
// set for a dynamic disk, as qemu does, all clear for a differencing one),
// the BAT entry and the moved footer are written by the next Flush. Called
// with mu held.
func (img *Image) allocate(blk int64) error {
	start := img.freeOff
	end := start + img.bitmapSize + img.blockSize
	if end/sectorSize > batUnused-1 {
		return fmt.Errorf("vhd: file would outgrow the 2 TiB the BAT can address: %w", blockdev.ErrNoSpace)
	}
	// The file past the old footer is fresh; anything that was there is
	// zeroed so that the new block reads as zeroes.
	if err := img.f.Truncate(start + img.bitmapSize); err != nil {
		return fmt.Errorf("vhd: allocate block %d: %w", blk, err)
	}
	if err := img.f.Truncate(end); err != nil {
		return fmt.Errorf("vhd: allocate block %d: %w", blk, err)
	}
	bm := &bitmap{b: make([]byte, img.bitmapSize), dirty: true}
	if !img.diff {
		for i := range bm.b {
			bm.b[i] = 0xff
		}
	}
	img.bat[blk] = uint32(start / sectorSize)
	img.batDirty[blk*4/sectorSize] = true
	img.bitmaps[blk] = bm
	img.freeOff = end
	img.grown = true
	return nil
}

// Flush makes every completed write durable: the data first, then the
// bitmaps and the footer, then the BAT entries that reach them.
func (img *Image) Flush() error {
	img.mu.Lock()
	defer img.mu.Unlock()
	if img.closed {
		return blockdev.ErrClosed
	}
	if img.readOnly {
		return nil
	}
	if err := img.sync(); err != nil {
		return err
	}
	meta := false
	for blk, bm := range img.bitmaps {
		if !bm.dirty {
			continue
		}
		if _, err := img.f.WriteAt(bm.b, int64(img.bat[blk])*sectorSize); err != nil {
			return fmt.Errorf("vhd: write sector bitmap of block %d: %w", blk, err)
		}
		bm.dirty, meta = false, true
		if !img.diff {
			delete(img.bitmaps, blk) // dynamic disks never read them
		}
	}
	if img.grown {
		if _, err := img.f.WriteAt(img.ft.raw[:], img.freeOff); err != nil {
			return fmt.Errorf("vhd: write footer: %w", err)
		}
		img.grown, meta = false, true
	}
	if len(img.batDirty) == 0 {
		if meta {
			return img.sync()
		}
		return nil
	}
	if err := img.sync(); err != nil {
		return err
	}
	for sec := range img.batDirty {
		buf := make([]byte, sectorSize)
		first := sec * sectorSize / 4
		for i := int64(0); i < sectorSize/4 && first+i < int64(len(img.bat)); i++ {
			binary.BigEndian.PutUint32(buf[4*i:], img.bat[first+i])
		}
		n := min(int64(sectorSize), int64(len(img.bat))*4-sec*sectorSize)
		if _, err := img.f.WriteAt(buf[:n], int64(img.dh.tableOffset)+sec*sectorSize); err != nil {
			return fmt.Errorf("vhd: write BAT: %w", err)
		}
		delete(img.batDirty, sec)
	}
	return img.sync()
}

// sync makes every write to the file durable.
func (img *Image) sync() error {
	if err := unix.Fdatasync(int(img.f.Fd())); err != nil {
		return fmt.Errorf("vhd: sync: %w", err)
	}
	return nil
}
