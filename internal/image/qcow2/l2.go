package qcow2

import (
	"encoding/binary"
	"fmt"
)

// Everything in this file runs with img.mu held.

// l2Entry returns the L2 entry (and, with extended L2, the subcluster
// bitmap) of guest cluster vc; zeroes when its L2 table is unallocated.
func (img *Image) l2Entry(vc int64) (e, bm uint64, err error) {
	t, err := img.l2Table(vc/img.l2n, false)
	if err != nil || t == nil {
		return 0, 0, err
	}
	e, bm = img.entryAt(t, vc%img.l2n)
	return e, bm, nil
}

// entryAt decodes entry i of L2 table t.
func (img *Image) entryAt(t *table, i int64) (e, bm uint64) {
	if img.h.extL2() {
		return binary.BigEndian.Uint64(t.b[i*16:]), binary.BigEndian.Uint64(t.b[i*16+8:])
	}
	return binary.BigEndian.Uint64(t.b[i*8:]), 0
}

// setEntry stores entry i of L2 table t and marks it dirty.
func (img *Image) setEntry(t *table, i int64, e, bm uint64) {
	if img.h.extL2() {
		binary.BigEndian.PutUint64(t.b[i*16:], e)
		binary.BigEndian.PutUint64(t.b[i*16+8:], bm)
	} else {
		binary.BigEndian.PutUint64(t.b[i*8:], e)
	}
	t.dirty = true
}

// l2Table returns the L2 table of L1 index i: nil when it is unallocated
// (and forWrite is false). With forWrite the table is allocated, or copied
// when it is shared, so it can be changed.
func (img *Image) l2Table(i int64, forWrite bool) (*table, error) {
	if i >= int64(len(img.l1)) {
		return nil, corruptf("L1 index %d past the L1 table (%d entries)", i, len(img.l1))
	}
	e := img.l1[i]
	off := int64(e & offsetMask)
	if e&^(offsetMask|flagCopied) != 0 {
		return nil, corruptf("L1 entry %d (%#x) has reserved bits set", i, e)
	}
	if off == 0 {
		if !forWrite {
			return nil, nil
		}
		host, err := img.alloc(1)
		if err != nil {
			return nil, err
		}
		t, err := img.newL2(host)
		if err != nil {
			return nil, err
		}
		img.l1[i] = uint64(host) | flagCopied
		img.l1Dirty = true
		return t, nil
	}
	t, err := img.loadL2(off)
	if err != nil || !forWrite || e&flagCopied != 0 {
		return t, err
	}
	// The L1 entry says the table may be shared: ask its refcount.
	rc, err := img.refcount(off / img.cs)
	if err != nil {
		return nil, err
	}
	if rc == 1 {
		img.l1[i] |= flagCopied
		img.l1Dirty = true
		return t, nil
	}
	// Copy on write: a new table referencing the same clusters, none of
	// them exclusively ours any more.
	src := append([]byte(nil), t.b...)
	host, err := img.alloc(1)
	if err != nil {
		return nil, err
	}
	nt, err := img.newL2(host)
	if err != nil {
		return nil, err
	}
	copy(nt.b, src)
	for j := range img.l2n {
		e, bm := img.entryAt(nt, j)
		img.setEntry(nt, j, e&^flagCopied, bm)
	}
	img.l1[i] = uint64(host) | flagCopied
	img.l1Dirty = true
	img.pendingFree = append(img.pendingFree, off/img.cs)
	return nt, nil
}

// loadL2 returns the L2 table at host offset off, reading it if needed.
func (img *Image) loadL2(off int64) (*table, error) {
	if t := img.l2c.get(off); t != nil {
		return t, nil
	}
	if off%img.cs != 0 || off+img.cs > img.fileEnd {
		return nil, corruptf("L2 table at %#x outside the file or unaligned", off)
	}
	if err := img.makeRoom(img.l2c); err != nil {
		return nil, err
	}
	t := &table{off: off, b: make([]byte, img.cs)}
	if _, err := img.f.ReadAt(t.b, off); err != nil {
		return nil, fmt.Errorf("qcow2: read L2 table at %#x: %w", off, err)
	}
	img.l2c.add(t)
	return t, nil
}

// newL2 puts an empty, dirty L2 table for host offset off into the cache.
func (img *Image) newL2(off int64) (*table, error) {
	if err := img.makeRoom(img.l2c); err != nil {
		return nil, err
	}
	t := &table{off: off, b: make([]byte, img.cs), dirty: true}
	img.l2c.add(t)
	return t, nil
}

// makeRoom evicts the least recently used table of c, writing it back
// first when dirty. An L2 table is written only after the refcounts and
// data it depends on are on disk.
func (img *Image) makeRoom(c *cache) error {
	v := c.victim()
	if v == nil {
		return nil
	}
	if v.dirty {
		if c == img.l2c {
			if err := img.syncRefcounts(false); err != nil {
				return err
			}
		}
		if err := img.writeTable(v); err != nil {
			return err
		}
	}
	c.remove(v)
	return nil
}

// writeTable writes a cached table to the file and marks it clean.
func (img *Image) writeTable(t *table) error {
	if _, err := img.f.WriteAt(t.b, t.off); err != nil {
		return fmt.Errorf("qcow2: write metadata at %#x: %w", t.off, err)
	}
	t.dirty = false
	return nil
}
