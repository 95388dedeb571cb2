package qcow2

import (
	"encoding/binary"
	"fmt"

	"vdisk/internal/blockdev"
)

// Everything in this file runs with img.mu held.

// rbEntries is the number of refcounts in one refcount block.
func (img *Image) rbEntries() int64 { return img.cs * 8 / int64(img.h.refcountBits()) }

// getRef decodes refcount i of block b.
func getRef(b []byte, i int64, bits int) uint64 {
	switch bits {
	case 8:
		return uint64(b[i])
	case 16:
		return uint64(binary.BigEndian.Uint16(b[i*2:]))
	case 32:
		return uint64(binary.BigEndian.Uint32(b[i*4:]))
	case 64:
		return binary.BigEndian.Uint64(b[i*8:])
	}
	bit := i * int64(bits)
	return uint64(b[bit/8]>>(bit%8)) & (1<<bits - 1)
}

// putRef encodes refcount i of block b.
func putRef(b []byte, i int64, bits int, v uint64) {
	switch bits {
	case 8:
		b[i] = byte(v)
	case 16:
		binary.BigEndian.PutUint16(b[i*2:], uint16(v))
	case 32:
		binary.BigEndian.PutUint32(b[i*4:], uint32(v))
	case 64:
		binary.BigEndian.PutUint64(b[i*8:], v)
	default:
		bit := i * int64(bits)
		mask := byte(1<<bits-1) << (bit % 8)
		b[bit/8] = b[bit/8]&^mask | byte(v)<<(bit%8)&mask
	}
}

// refBlock returns the refcount block holding cluster cl's refcount, nil
// when none is allocated.
func (img *Image) refBlock(cl int64) (*table, error) {
	i := cl / img.rbEntries()
	if i >= int64(len(img.refTable)) || img.refTable[i] == 0 {
		return nil, nil
	}
	off := int64(img.refTable[i])
	if t := img.rbc.get(off); t != nil {
		return t, nil
	}
	if off+img.cs > img.fileEnd {
		return nil, corruptf("refcount block at %#x past the end of the file", off)
	}
	if err := img.makeRoom(img.rbc); err != nil {
		return nil, err
	}
	t := &table{off: off, b: make([]byte, img.cs)}
	if _, err := img.f.ReadAt(t.b, off); err != nil {
		return nil, fmt.Errorf("qcow2: read refcount block at %#x: %w", off, err)
	}
	img.rbc.add(t)
	return t, nil
}

// refcount returns host cluster cl's refcount.
func (img *Image) refcount(cl int64) (uint64, error) {
	t, err := img.refBlock(cl)
	if err != nil || t == nil {
		return 0, err
	}
	return getRef(t.b, cl%img.rbEntries(), img.h.refcountBits()), nil
}

// setRefcount sets host cluster cl's refcount, allocating its refcount
// block when needed.
func (img *Image) setRefcount(cl int64, v uint64) error {
	bits := img.h.refcountBits()
	if bits < 64 && v >= 1<<bits {
		return fmt.Errorf("qcow2: refcount of cluster %d would overflow %d bits", cl, bits)
	}
	t, err := img.refBlock(cl)
	if err != nil {
		return err
	}
	if t == nil {
		if err := img.addRefBlock(cl / img.rbEntries()); err != nil {
			return err
		}
		if t, err = img.refBlock(cl); err != nil {
			return err
		}
	}
	putRef(t.b, cl%img.rbEntries(), bits, v)
	t.dirty = true
	if err := img.markDirty(); err != nil {
		return err
	}
	return nil
}

// markDirty sets the header's dirty bit before the first refcount change
// of an image with lazy refcounts.
func (img *Image) markDirty() error {
	if !img.lazy || img.markedDirty {
		return nil
	}
	img.markedDirty = true
	img.h.incompat |= incDirty
	return img.writeHeaderField(72, img.h.incompat)
}

// addRefBlock allocates refcount block i, placing it at the first cluster
// it covers (free, since no block counted it) so it describes itself.
func (img *Image) addRefBlock(i int64) error {
	if i >= int64(len(img.refTable)) {
		if err := img.growRefTable(i + 1); err != nil {
			return err
		}
	}
	if img.refTable[i] != 0 {
		return nil
	}
	off := i * img.rbEntries() * img.cs
	if err := img.makeRoom(img.rbc); err != nil {
		return err
	}
	t := &table{off: off, b: make([]byte, img.cs), dirty: true}
	putRef(t.b, 0, img.h.refcountBits(), 1)
	img.rbc.add(t)
	img.refTable[i] = uint64(off)
	img.refTableDirty = true
	img.fileEnd = max(img.fileEnd, off+img.cs)
	return img.markDirty()
}

// growRefTable replaces the refcount table with one of at least n entries.
// The new table and the refcount blocks that describe it go past the end
// of the file; the header is switched to it once both are on disk.
func (img *Image) growRefTable(n int64) error {
	if err := img.syncRefcounts(true); err != nil {
		return err
	}
	per := img.cs / 8
	E := img.rbEntries()
	entries := max(n, 2*int64(len(img.refTable)))
	entries = (entries + per - 1) / per * per
	p := (img.fileEnd + img.cs - 1) / img.cs
	var blocks map[int64]int64 // table index → cluster of its new block
	for {
		tc := entries / per
		if tc*img.cs > maxRefTableBytes {
			return fmt.Errorf("qcow2: refcount table would exceed %d bytes: %w", maxRefTableBytes, blockdev.ErrNoSpace)
		}
		if last := (p + tc - 1) / E; last >= entries {
			entries = (last + 1 + per - 1) / per * per
			continue
		}
		blocks = map[int64]int64{}
		moved := false
		for i := p / E; i <= (p+tc-1)/E && !moved; i++ {
			if i < int64(len(img.refTable)) && img.refTable[i] != 0 {
				continue
			}
			if c := i * E; c >= p && c < p+tc {
				p, moved = c+1, true
			} else {
				blocks[i] = c
			}
		}
		if !moved {
			for c := p; c < p+tc && !moved; c++ {
				if rc, err := img.refcount(c); err != nil {
					return err
				} else if rc != 0 {
					p, moved = c+1, true
				}
			}
		}
		if !moved {
			break
		}
	}
	tc := entries / per
	bits := img.h.refcountBits()
	newBlocks := map[int64][]byte{}
	for i, c := range blocks {
		b := make([]byte, img.cs)
		putRef(b, c%E, bits, 1)
		newBlocks[i] = b
	}
	for c := p; c < p+tc; c++ {
		if b, ok := newBlocks[c/E]; ok {
			putRef(b, c%E, bits, 1)
		} else if err := img.setRefcount(c, 1); err != nil {
			return err
		}
	}
	nt := make([]uint64, entries)
	copy(nt, img.refTable)
	for i, c := range blocks {
		nt[i] = uint64(c * img.cs)
		if _, err := img.f.WriteAt(newBlocks[i], c*img.cs); err != nil {
			return fmt.Errorf("qcow2: write refcount block: %w", err)
		}
		img.fileEnd = max(img.fileEnd, (c+1)*img.cs)
	}
	if _, err := img.f.WriteAt(encodeTable(nt), p*img.cs); err != nil {
		return fmt.Errorf("qcow2: write refcount table: %w", err)
	}
	img.fileEnd = max(img.fileEnd, (p+tc)*img.cs)
	// Refcounts of the new table that landed in existing blocks.
	for _, t := range img.rbc.dirtyTables() {
		if err := img.writeTable(t); err != nil {
			return err
		}
	}
	if err := img.sync(); err != nil {
		return err
	}
	var hdr [12]byte
	binary.BigEndian.PutUint64(hdr[:], uint64(p*img.cs))
	binary.BigEndian.PutUint32(hdr[8:], uint32(tc))
	if _, err := img.f.WriteAt(hdr[:], 48); err != nil {
		return fmt.Errorf("qcow2: write header: %w", err)
	}
	if err := img.sync(); err != nil {
		return err
	}
	oldOff, oldClusters := int64(img.h.refTableOff), int64(img.h.refTableClusters)
	img.h.refTableOff, img.h.refTableClusters = uint64(p*img.cs), uint32(tc)
	img.refTable = nt
	img.refTableDirty = false
	for c := range oldClusters {
		img.readyFree = append(img.readyFree, oldOff/img.cs+c)
	}
	return nil
}

// alloc allocates n contiguous host clusters with refcount 1 and returns
// the offset of the first. n must not exceed half a refcount block's
// entries (see allocRun).
func (img *Image) alloc(n int64) (int64, error) {
	E := img.rbEntries()
	for {
		start, err := img.findFree(img.freeHint, n)
		if err != nil {
			return 0, err
		}
		added := false
		for i := start / E; i <= (start+n-1)/E; i++ {
			if i >= int64(len(img.refTable)) || img.refTable[i] == 0 {
				if err := img.addRefBlock(i); err != nil {
					return 0, err
				}
				added = true
			}
		}
		if added {
			continue // the new blocks may sit where we wanted to be
		}
		for c := start; c < start+n; c++ {
			if err := img.setRefcount(c, 1); err != nil {
				return 0, err
			}
		}
		// Every cluster from the hint to start is in use (for n == 1), or
		// in a run too short for n.
		if n == 1 || start == img.freeHint {
			img.freeHint = start + n
		}
		img.fileEnd = max(img.fileEnd, (start+n)*img.cs)
		return start * img.cs, nil
	}
}

// findFree returns the first run of n clusters with refcount 0 at or after
// cluster from.
func (img *Image) findFree(from, n int64) (int64, error) {
	E := img.rbEntries()
	start, run := from, int64(0)
	for c := from; run < n; {
		i := c / E
		if i >= int64(len(img.refTable)) || img.refTable[i] == 0 {
			// A whole block of free clusters.
			step := (i+1)*E - c
			run += step
			c += step
			continue
		}
		rc, err := img.refcount(c)
		if err != nil {
			return 0, err
		}
		c++
		if rc != 0 {
			start, run = c, 0
		} else {
			run++
		}
	}
	return start, nil
}

// decRef drops one reference to host cluster cl and returns its refcount
// before; a cluster with none is corruption.
func (img *Image) decRef(cl int64) (uint64, error) {
	rc, err := img.refcount(cl)
	if err != nil {
		return 0, err
	}
	if rc == 0 {
		return 0, corruptf("freeing cluster %d whose refcount is already 0", cl)
	}
	return rc, img.setRefcount(cl, rc-1)
}

// unref drops one reference to host cluster cl, punching it out of the
// file when it becomes free. Only applyFrees calls it.
func (img *Image) unref(cl int64) error {
	rc, err := img.decRef(cl)
	if err != nil {
		return err
	}
	if rc == 1 {
		img.freeHint = min(img.freeHint, cl)
		img.punch(cl*img.cs, img.cs)
	}
	return nil
}

// syncRefcounts writes dirty refcount blocks and the refcount table and
// syncs the file, so data and refcounts written so far are durable. With
// lazy refcounts (and !force) it only syncs the data.
func (img *Image) syncRefcounts(force bool) error {
	if img.lazy && !force {
		return img.sync()
	}
	for _, t := range img.rbc.dirtyTables() {
		if err := img.writeTable(t); err != nil {
			return err
		}
	}
	if img.refTableDirty {
		if err := img.sync(); err != nil {
			return err
		}
		if _, err := img.f.WriteAt(encodeTable(img.refTable), int64(img.h.refTableOff)); err != nil {
			return fmt.Errorf("qcow2: write refcount table: %w", err)
		}
		img.refTableDirty = false
	}
	return img.sync()
}
