package vhdx

import (
	"encoding/binary"
	"fmt"
	"os"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// Bounds of one Extents call: the extents it returns and the blocks it
// looks at.
const (
	maxExtents      = 4096
	maxExtentBlocks = 1 << 16
)

// check refuses calls after Close and ranges outside the disk.
func (img *Image) check(off, n int64) error {
	img.mu.Lock()
	closed := img.closed
	img.mu.Unlock()
	if closed {
		return blockdev.ErrClosed
	}
	return blockdev.CheckRange(off, n, img.m.size)
}

// entry returns the BAT entry of the payload block holding guest offset
// off.
func (img *Image) entry(off int64) uint64 {
	img.mu.Lock()
	defer img.mu.Unlock()
	return img.bat[img.payloadIndex(off/img.m.blockSize)]
}

// fromParent reports whether a payload block in state st reads from the
// parent (in a differencing disk) rather than as zeroes.
func (img *Image) fromParent(st uint64) bool {
	return img.m.hasParent && st != stateZero
}

// ReadAt reads len(p) bytes at off.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	if err := img.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	bs := img.m.blockSize
	for done := int64(0); done < int64(len(p)); {
		pos := off + done
		n := min(int64(len(p))-done, bs-pos%bs)
		b := p[done : done+n]
		e := img.entry(pos)
		fo := int64(e>>batOffsetShift)*mib + pos%bs
		var err error
		switch st := e & 7; {
		case st == stateFullPresent:
			_, err = img.f.ReadAt(b, fo)
		case st == statePartPresent:
			err = img.readPartial(b, pos, fo)
		case img.fromParent(st):
			err = img.readParent(b, pos)
		default:
			clear(b)
		}
		if err != nil {
			return int(done), fmt.Errorf("vhdx: read at %d: %w", pos, err)
		}
		done += n
	}
	return len(p), nil
}

// readPartial reads b at guest offset pos from a partially present block
// whose data for pos is at file offset fo: sectors whose bit is set in the
// block's sector bitmap come from the file, the others from the parent.
func (img *Image) readPartial(b []byte, pos, fo int64) error {
	lss, bs := img.m.lss, img.m.blockSize
	img.mu.Lock()
	sl, err := img.bitmap(pos / bs)
	var bm []byte
	if err == nil {
		bm = append([]byte(nil), sl.b...)
	}
	img.mu.Unlock()
	if err != nil {
		return err
	}
	has := func(s int64) bool { return bm[s/8]&(1<<(s%8)) != 0 }
	in0 := pos % bs
	for i := int64(0); i < int64(len(b)); {
		s := (in0 + i) / lss
		in := has(s)
		j := min(int64(len(b)), (s+1)*lss-in0)
		for j < int64(len(b)) && has((in0+j)/lss) == in {
			j = min(int64(len(b)), j+lss)
		}
		var err error
		if in {
			_, err = img.f.ReadAt(b[i:j], fo+i)
		} else {
			err = img.readParent(b[i:j], pos+i)
		}
		if err != nil {
			return err
		}
		i = j
	}
	return nil
}

// readParent fills b with the parent's bytes at off (zeroes without a
// parent, and beyond its end).
func (img *Image) readParent(b []byte, off int64) error {
	if err := image.ReadParent(img.parent, b, off); err != nil {
		return fmt.Errorf("vhdx: %w", err)
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
	bs := img.m.blockSize
	for done := int64(0); done < int64(len(p)); {
		pos := off + done
		n := min(int64(len(p))-done, bs-pos%bs)
		if img.m.hasParent {
			if err := img.writeDiff(p[done:done+n], pos); err != nil {
				return int(done), err
			}
			done += n
			continue
		}
		fo, err := img.mapForWrite(pos)
		if err == nil {
			err = img.pwrite(p[done:done+n], fo)
		}
		if err != nil {
			return int(done), err
		}
		done += n
	}
	return len(p), nil
}

// touch gives the headers this session's write GUIDs before the first
// change. Called with mu held.
func (img *Image) touch() error {
	if img.touched {
		return nil
	}
	if err := img.updateHeaders(guid{}, true); err != nil {
		return err
	}
	img.touched = true
	return nil
}

// mapForWrite returns the file offset of guest offset pos, allocating its
// block at the end of the file when it has none.
func (img *Image) mapForWrite(pos int64) (int64, error) {
	img.mu.Lock()
	defer img.mu.Unlock()
	if err := img.touch(); err != nil {
		return 0, err
	}
	bs := img.m.blockSize
	i := img.payloadIndex(pos / bs)
	if e := img.bat[i]; e&7 == stateFullPresent {
		return int64(e>>batOffsetShift)*mib + pos%bs, nil
	}
	start, err := img.grow(bs)
	if err != nil {
		return 0, err
	}
	img.setEntry(i, start, stateFullPresent)
	return start + pos%bs, nil
}

// Flush makes every completed write durable: the data first, then the
// sector bitmaps, then the BAT entries that reach new blocks.
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
	if n, err := img.writeBitmaps(); err != nil {
		return err
	} else if n > 0 {
		if err := img.sync(); err != nil {
			return err
		}
	}
	if len(img.batDirty) == 0 {
		return nil
	}
	for sec := range img.batDirty {
		first := sec * 4096 / 8
		last := min(first+4096/8, int64(len(img.bat)))
		buf := make([]byte, 8*(last-first))
		for i := first; i < last; i++ {
			binary.LittleEndian.PutUint64(buf[8*(i-first):], img.bat[i])
		}
		if _, err := img.f.WriteAt(buf, img.batReg.off+sec*4096); err != nil {
			return fmt.Errorf("vhdx: write BAT: %w", err)
		}
		delete(img.batDirty, sec)
	}
	return img.sync()
}

// sync makes every write to the file durable.
func (img *Image) sync() error {
	if err := img.f.Sync(); err != nil {
		return fmt.Errorf("vhdx: sync: %w", err)
	}
	return nil
}

// Trim makes [off, off+n) read as zeroes, releasing the storage of the
// allocated part (see WriteZeroes).
func (img *Image) Trim(off, n int64) error { return img.WriteZeroes(off, n, true) }

// WriteZeroes makes [off, off+n) read as zeroes: blocks without data
// already do; in allocated blocks the range is punched (mayTrim) or zeroed
// with fallocate, or written with zeroes where the file system cannot. A
// differencing disk writes zeroes through WriteAt.
func (img *Image) WriteZeroes(off, n int64, mayTrim bool) error {
	if err := img.check(off, n); err != nil {
		return err
	}
	if img.readOnly {
		return blockdev.ErrReadOnly
	}
	if img.m.hasParent {
		// A block without data shows the parent: zeroes must be written.
		return blockdev.WriteZeroesByWriting(img, off, n)
	}
	bs := img.m.blockSize
	for end := off + n; off < end; {
		c := min(end-off, bs-off%bs)
		e := img.entry(off)
		if e&7 == stateFullPresent {
			img.mu.Lock()
			err := img.touch()
			img.mu.Unlock()
			if err != nil {
				return err
			}
			if err := img.zeroFile(int64(e>>batOffsetShift)*mib+off%bs, c, mayTrim); err != nil {
				return err
			}
		}
		off += c
	}
	return nil
}

// zeroFile zeroes n bytes of the file at off.
func (img *Image) zeroFile(off, n int64, mayTrim bool) error {
	if err := zeroRange(img.f, off, n, mayTrim); err != nil {
		return fmt.Errorf("vhdx: zero at %#x: %w", off, err)
	}
	return nil
}

// zeroRange makes n bytes of f at off read as zeroes: a local file's range
// is punched (mayTrim) or zeroed with fallocate (blockdev.ZeroFileRange),
// another File's punched when it can and may, else written with zeroes.
func zeroRange(f image.File, off, n int64, mayTrim bool) error {
	if lf, ok := f.(interface{ OS() *os.File }); ok {
		return blockdev.ZeroFileRange(lf.OS(), off, n, mayTrim)
	}
	if p, ok := f.(image.Puncher); ok && mayTrim {
		return p.Punch(off, n)
	}
	for end := off + n; off < end; off += int64(len(zeroes)) {
		if _, err := f.WriteAt(zeroes[:min(end-off, int64(len(zeroes)))], off); err != nil {
			return err
		}
	}
	return nil
}

// zeroes is what zeroRange writes.
var zeroes = make([]byte, 256<<10)

// fileExtents adds the extents of the file range [off, off+n) at guest
// offset guest: a local file's holes read as zeroes
// (blockdev.FileExtents); another File's range is data.
func fileExtents(f image.File, off, n, guest int64, add func(o, l int64, fl blockdev.ExtentFlags)) {
	if lf, ok := f.(interface{ OS() *os.File }); ok {
		blockdev.FileExtents(lf.OS(), off, n, guest, add)
		return
	}
	add(guest, n, 0)
}

// Extents describes [off, off+n): blocks with data (fully or partially
// present) are data, except holes of the file inside fully present ones,
// which read as zeroes; a differencing disk's blocks without data have the
// parent's extents; the rest are holes that read as zeroes.
func (img *Image) Extents(off, n int64) ([]blockdev.Extent, error) {
	if err := img.check(off, n); err != nil {
		return nil, err
	}
	var out []blockdev.Extent
	add := func(o, l int64, f blockdev.ExtentFlags) { out = blockdev.AppendExtent(out, o, l, f) }
	bs := img.m.blockSize
	for end, seen := off+n, 0; off < end && len(out) < maxExtents && seen < maxExtentBlocks; seen++ {
		c := min(end-off, bs-off%bs)
		e := img.entry(off)
		switch st := e & 7; {
		case st == stateFullPresent:
			fileExtents(img.f, int64(e>>batOffsetShift)*mib+off%bs, c, off, add)
		case st == statePartPresent:
			add(off, c, 0)
		case img.fromParent(st) && img.parent != nil:
			if err := img.parentExtents(off, c, add); err != nil {
				return nil, err
			}
		default:
			add(off, c, blockdev.ExtentHole|blockdev.ExtentZero)
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
