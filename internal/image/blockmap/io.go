package blockmap

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// guard refuses calls after Close and ranges outside the disk, and
// writes to a read-only Map; before a write it calls BeforeWrite.
func (m *Map) guard(off, n int64, write bool) error {
	m.mu.Lock()
	closed := m.closed
	m.mu.Unlock()
	if closed {
		return blockdev.ErrClosed
	}
	if err := blockdev.CheckRange(off, n, m.c.Size); err != nil {
		return err
	}
	if !write {
		return nil
	}
	if m.c.ReadOnly {
		return blockdev.ErrReadOnly
	}
	if m.c.BeforeWrite != nil {
		return m.c.BeforeWrite()
	}
	return nil
}

// each calls fn for every piece of [off, off+n) inside one block, in
// order, and returns how many bytes from off the pieces that succeeded
// cover.
func (m *Map) each(off, n int64, fn func(blk, pos, c int64) error) (int64, error) {
	bs := m.c.BlockSize
	for pos, end := off, off+n; pos < end; {
		blk := pos / bs
		c := min(end-pos, (blk+1)*bs-pos)
		if err := fn(blk, pos, c); err != nil {
			return pos - off, err
		}
		pos += c
	}
	return n, nil
}

// ReadAt reads len(p) bytes at off (see the package comment for n on
// error).
func (m *Map) ReadAt(p []byte, off int64) (int, error) { return m.rw(p, off, false) }

// WriteAt writes len(p) bytes at off, allocating blocks as needed (see
// the package comment for n on error).
func (m *Map) WriteAt(p []byte, off int64) (int, error) { return m.rw(p, off, true) }

// rw serves ReadAt and WriteAt block by block.
func (m *Map) rw(p []byte, off int64, write bool) (int, error) {
	if err := m.guard(off, int64(len(p)), write); err != nil {
		return 0, err
	}
	n, err := m.each(off, int64(len(p)), func(blk, pos, c int64) error {
		if write {
			return m.write(p[pos-off:pos-off+c], blk, pos)
		}
		return m.read(p[pos-off:pos-off+c], blk, pos)
	})
	return int(n), err
}

// read fills b from guest offset pos inside block blk.
func (m *Map) read(b []byte, blk, pos int64) error {
	m.mu.Lock()
	e, err := m.entry(blk)
	var rs []run
	if err == nil && e.State == Partial {
		rs, err = m.runs(blk, e, pos, int64(len(b)))
	}
	m.mu.Unlock()
	if err != nil {
		return err
	}
	in := pos - blk*m.c.BlockSize
	switch e.State {
	case Data:
		return m.readFile(b, e.Off+in)
	case Zero:
		clear(b)
		return nil
	case Unallocated:
		return m.readParent(b, pos)
	}
	for _, r := range rs {
		part := b[r.pos-pos : r.pos-pos+r.n]
		if r.in {
			err = m.readFile(part, e.Off+r.pos-blk*m.c.BlockSize)
		} else {
			err = m.readParent(part, r.pos)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// readFile reads b at file offset off.
func (m *Map) readFile(b []byte, off int64) error {
	if _, err := m.f.ReadAt(b, off); err != nil {
		return fmt.Errorf("%s: read data at %#x: %w", m.c.Name, off, err)
	}
	return nil
}

// readParent fills b with the parent's bytes at guest offset off.
func (m *Map) readParent(b []byte, off int64) error {
	if err := image.ReadParent(m.parent, b, off+m.c.ParentOff); err != nil {
		return fmt.Errorf("%s: %w", m.c.Name, err)
	}
	return nil
}

// run is a piece of a Partial block whose sectors are all in the file, or
// all not.
type run struct {
	pos, n int64
	in     bool
}

// runs splits [pos, pos+n) of Partial block blk by its sector bitmap.
// Called with mu held.
func (m *Map) runs(blk int64, e Entry, pos, n int64) ([]run, error) {
	bm, err := m.bitmap(blk, e)
	if err != nil {
		return nil, err
	}
	base := blk * m.c.BlockSize
	var out []run
	for end := pos + n; pos < end; {
		s := (pos - base) / m.ss
		in := m.has(bm, s)
		stop := min(end, base+(s+1)*m.ss)
		for stop < end && m.has(bm, (stop-base)/m.ss) == in {
			stop = min(end, stop+m.ss)
		}
		out = append(out, run{pos, stop - pos, in})
		pos = stop
	}
	return out, nil
}

// bit returns the byte index and mask of sector s's bit.
func (m *Map) bit(s int64) (int64, byte) {
	if m.c.LSBFirst {
		return s / 8, 1 << (s % 8)
	}
	return s / 8, 0x80 >> (s % 8)
}

func (m *Map) has(bm *bitmap, s int64) bool {
	i, mask := m.bit(s)
	return bm.b[i]&mask != 0
}

// bitmap returns the sector bitmap of Partial block blk, reading it when
// it is not in memory. Called with mu held.
func (m *Map) bitmap(blk int64, e Entry) (*bitmap, error) {
	if bm, ok := m.bitmaps[blk]; ok {
		return bm, nil
	}
	bmr, ok := m.c.Codec.(Bitmapper)
	if !ok || m.c.BitmapSize <= 0 || m.c.BitmapSize*8*m.ss < m.c.BlockSize {
		return nil, m.corruptf("block %d is partially present, but the format has no sector bitmaps", blk)
	}
	off, err := bmr.BitmapAt(blk, e)
	if err != nil {
		return nil, err
	}
	m.evict()
	bm := &bitmap{off: off, b: make([]byte, m.c.BitmapSize)}
	if _, err := m.f.ReadAt(bm.b, off); err != nil {
		return nil, fmt.Errorf("%s: read sector bitmap of block %d: %w", m.c.Name, blk, err)
	}
	m.bitmaps[blk] = bm
	return bm, nil
}

// evict drops the clean bitmaps when there are too many. Called with mu
// held.
func (m *Map) evict() {
	if len(m.bitmaps) < maxBitmaps {
		return
	}
	for k, v := range m.bitmaps {
		if !v.dirty {
			delete(m.bitmaps, k)
		}
	}
}

// write stores b at guest offset pos inside block blk.
func (m *Map) write(b []byte, blk, pos int64) error {
	in := pos - blk*m.c.BlockSize
	m.mu.Lock()
	e, err := m.entry(blk)
	if err != nil || e.State == Data {
		m.mu.Unlock()
		if err != nil {
			return err
		}
		return m.writeFile(b, e.Off+in)
	}
	defer m.mu.Unlock()
	if !e.Has() {
		copyUp := e.State == Unallocated && m.parent != nil
		if e, err = m.allocate(blk); err != nil {
			return err
		}
		if e.State == Data && copyUp {
			return m.copyUp(b, blk, e, in)
		}
	}
	if e.State == Data {
		return m.writeFile(b, e.Off+in)
	}
	return m.writePartial(b, blk, e, pos)
}

// copyUp writes b at in inside the new Data block blk and fills the rest
// of the block from the parent. Called with mu held.
func (m *Map) copyUp(b []byte, blk int64, e Entry, in int64) error {
	bs, base := m.c.BlockSize, blk*m.c.BlockSize
	for _, r := range []Span{{0, in}, {in + int64(len(b)), bs}} {
		for o := r.Start; o < r.End; {
			c := min(r.End-o, 1<<20)
			buf := make([]byte, c)
			if err := m.readParent(buf, base+o); err != nil {
				return err
			}
			if !blockdev.IsZero(buf) {
				if err := m.writeFile(buf, e.Off+o); err != nil {
					return err
				}
			}
			o += c
		}
	}
	return m.writeFile(b, e.Off+in)
}

// writePartial stores b at guest offset pos inside Partial block blk:
// sectors in the file are written as they are; the others get whole
// sectors, their edges filled from the parent, and then their bits.
// Called with mu held.
func (m *Map) writePartial(b []byte, blk int64, e Entry, pos int64) error {
	rs, err := m.runs(blk, e, pos, int64(len(b)))
	if err != nil {
		return err
	}
	base := blk * m.c.BlockSize
	bm := m.bitmaps[blk]
	for _, r := range rs {
		part := b[r.pos-pos : r.pos-pos+r.n]
		if r.in {
			if err := m.writeFile(part, e.Off+r.pos-base); err != nil {
				return err
			}
			continue
		}
		lo := base + (r.pos-base)/m.ss*m.ss
		hi := base + (r.pos+r.n-base+m.ss-1)/m.ss*m.ss
		buf := make([]byte, hi-lo)
		if lo < r.pos {
			if err := m.readParent(buf[:m.ss], lo); err != nil {
				return err
			}
		}
		if hi > r.pos+r.n {
			if err := m.readParent(buf[hi-lo-m.ss:], hi-m.ss); err != nil {
				return err
			}
		}
		copy(buf[r.pos-lo:], part)
		if err := m.writeFile(buf, e.Off+lo-base); err != nil {
			return err
		}
		for x := lo; x < hi; x += m.ss {
			i, mask := m.bit((x - base) / m.ss)
			bm.b[i] |= mask
		}
		bm.dirty = true
	}
	return nil
}

// writeFile writes b at file offset off.
func (m *Map) writeFile(b []byte, off int64) error {
	if _, err := m.f.WriteAt(b, off); err != nil {
		return fmt.Errorf("%s: write data at %#x: %w", m.c.Name, off, noSpace(err))
	}
	return nil
}

// noSpace marks a full file system as blockdev.ErrNoSpace.
func noSpace(err error) error {
	if !errors.Is(err, blockdev.ErrNoSpace) && (errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) || errors.Is(err, syscall.EFBIG)) {
		return fmt.Errorf("%w: %w", blockdev.ErrNoSpace, err)
	}
	return err
}

// allocate gives block blk storage at the end of the file, reading as
// zeroes, and records its entry (and, for a Partial block, an empty sector
// bitmap); they reach the file at the next Flush. Called with mu held.
func (m *Map) allocate(blk int64) (Entry, error) {
	pl, err := m.c.Codec.Place(blk, m.end)
	if err != nil {
		return Entry{}, err
	}
	e := pl.Entry
	for _, off := range pl.Also {
		m.dirty[off/m.c.Unit] = true
	}
	// Whatever lies past the end (a crash's leftovers, the old footer) is
	// cut, and the new space is extended as zeroes. When that fails the
	// placement still stands (Place may have placed the format's own
	// metadata there): the space is not given again, and Flush extends
	// the file over it before any table points at it.
	for _, n := range []int64{m.end, max(pl.End, e.Off+m.c.BlockSize)} {
		if err := m.f.Truncate(n); err != nil {
			m.end, m.grown = max(m.end, pl.End, e.Off+m.c.BlockSize), true
			return Entry{}, fmt.Errorf("%s: allocate block %d: %w", m.c.Name, blk, noSpace(err))
		}
	}
	if e.State == Partial {
		bmr, ok := m.c.Codec.(Bitmapper)
		if !ok {
			return Entry{}, fmt.Errorf("%s: a partial block without a sector bitmap", m.c.Name)
		}
		off, err := bmr.BitmapAt(blk, e)
		if err != nil {
			return Entry{}, err
		}
		m.evict()
		m.bitmaps[blk] = &bitmap{off: off, b: make([]byte, m.c.BitmapSize), dirty: true}
	}
	if pl.Meta != nil {
		m.meta = append(m.meta, pl)
	}
	m.end, m.grown = pl.End, true
	if err := m.put(blk, e); err != nil {
		return Entry{}, err
	}
	return e, nil
}

// put records block blk's entry and marks its table unit. Called with mu
// held.
func (m *Map) put(blk int64, e Entry) error {
	if !m.c.Lazy {
		m.dirty[m.c.Codec.Put(m.table, blk, e)/m.c.Unit] = true
		return nil
	}
	t, i, err := m.unit(blk)
	if err != nil {
		return err
	}
	m.c.Codec.Put(t, i, e)
	m.dirty[blk/(m.c.Unit/m.c.EntrySize)] = true
	return nil
}

// Trim makes [off, off+n) read as zeroes, releasing the storage of the
// allocated part (see WriteZeroes).
func (m *Map) Trim(off, n int64) error { return m.WriteZeroes(off, n, true) }

// WriteZeroes makes [off, off+n) read as zeroes. In a Data block the
// file range is punched (mayTrim) or zeroed in place; blocks stay
// allocated, so the table never changes here. Unallocated and Zero
// blocks of an image that is no layer already read as zeroes; in a
// layered image zeroes are written over what would show the parent.
func (m *Map) WriteZeroes(off, n int64, mayTrim bool) error {
	if err := m.guard(off, n, true); err != nil {
		return err
	}
	_, err := m.each(off, n, func(blk, pos, c int64) error {
		m.mu.Lock()
		e, err := m.entry(blk)
		m.mu.Unlock()
		switch {
		case err != nil:
			return err
		case e.State == Data:
			return m.zeroFile(e.Off+pos-blk*m.c.BlockSize, c, mayTrim)
		case e.State == Zero || e.State == Unallocated && !m.c.Layered:
			return nil
		}
		zero := make([]byte, min(c, 1<<20))
		for end := pos + c; pos < end; {
			k := min(end-pos, int64(len(zero)))
			if err := m.write(zero[:k], blk, pos); err != nil {
				return err
			}
			pos += k
		}
		return nil
	})
	return err
}

// osFile is a File that is a local file (image.LocalFile).
type osFile interface{ OS() *os.File }

// zeroFile makes n bytes of the file at off read as zeroes.
func (m *Map) zeroFile(off, n int64, mayTrim bool) error {
	if err := ZeroFile(m.f, off, n, mayTrim); err != nil {
		return fmt.Errorf("%s: zero at %#x: %w", m.c.Name, off, noSpace(err))
	}
	return nil
}

// ZeroFile makes n bytes of f at off read as zeroes: a local file's range
// is punched (mayTrim) or zeroed in place (blockdev.ZeroFileRange);
// another File's is punched when it can and may, else written with
// zeroes.
func ZeroFile(f image.File, off, n int64, mayTrim bool) error {
	if o, ok := f.(osFile); ok {
		return blockdev.ZeroFileRange(o.OS(), off, n, mayTrim)
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

// zeroes is what ZeroFile writes (never written to).
var zeroes = make([]byte, 256<<10)

// FileExtents adds the extents of the range [off, off+n) of f, at guest
// offset guest: a local file's holes read as zeroes
// (blockdev.FileExtents); another File's range is data.
func FileExtents(f image.File, off, n, guest int64, add func(o, l int64, fl blockdev.ExtentFlags)) {
	if o, ok := f.(osFile); ok {
		blockdev.FileExtents(o.OS(), off, n, guest, add)
		return
	}
	add(guest, n, 0)
}

// Extents describes [off, off+n): Data blocks are data but for the holes
// of a local file inside them, Partial blocks data; Zero blocks, and
// Unallocated ones without a parent, holes that read as zeroes;
// Unallocated blocks with a parent have the parent's extents, marked as
// holes of this image.
func (m *Map) Extents(off, n int64) ([]blockdev.Extent, error) {
	if err := m.guard(off, n, false); err != nil {
		return nil, err
	}
	var out []blockdev.Extent
	add := func(o, l int64, f blockdev.ExtentFlags) { out = blockdev.AppendExtent(out, o, l, f) }
	errStop := errors.New("enough")
	seen := 0
	_, err := m.each(off, n, func(blk, pos, c int64) error {
		if len(out) >= maxExtents || seen >= maxExtentBlocks {
			return errStop
		}
		seen++
		m.mu.Lock()
		e, err := m.entry(blk)
		m.mu.Unlock()
		if err != nil {
			return err
		}
		switch e.State {
		case Data:
			FileExtents(m.f, e.Off+pos-blk*m.c.BlockSize, c, pos, add)
		case Partial:
			add(pos, c, 0)
		case Zero:
			add(pos, c, blockdev.ExtentHole|blockdev.ExtentZero)
		default:
			po := m.c.ParentOff
			return ParentExtents(m.parent, pos+po, c, func(o, l int64, f blockdev.ExtentFlags) { add(o-po, l, f) })
		}
		return nil
	})
	if err != nil && err != errStop {
		return nil, err
	}
	return out, nil
}

// ParentExtents adds the extents of parent (nil: none) in [off, off+n),
// marked as holes of the layer above, and holes that read as zeroes past
// its end.
func ParentExtents(parent blockdev.Device, off, n int64, add func(o, l int64, f blockdev.ExtentFlags)) error {
	end := off + n
	if parent != nil {
		for pend := min(end, parent.Size()); off < pend; {
			ext, err := blockdev.Extents(parent, off, pend-off)
			if err != nil {
				return err
			}
			for _, e := range ext {
				add(e.Off, e.Len, e.Flags|blockdev.ExtentHole)
				off = e.Off + e.Len
			}
		}
	}
	if off < end {
		add(off, end-off, blockdev.ExtentHole|blockdev.ExtentZero)
	}
	return nil
}
