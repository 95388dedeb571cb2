package qcow2

import (
	"encoding/binary"
	"fmt"

	"vdisk/internal/image"
)

// repairRefcounts rebuilds the refcounts of an image left dirty (lazy
// refcounts and an unclean shutdown) from the references its tables make,
// then clears the dirty bit. It refuses an image whose tables themselves
// are damaged: only refcounts are repaired.
//
// When every needed refcount block exists, the blocks are rewritten in
// place. Otherwise a new refcount table and blocks go past the end of the
// file and the header switches to them once they are on disk; the old
// ones become free space.
func repairRefcounts(f image.File, h *header, fsize int64) error {
	c, err := newChecker(f, h, fsize)
	if err != nil {
		return err
	}
	if c.res.Corruptions > 0 || c.res.CheckErrors > 0 {
		return corruptf("dirty image has damaged tables, not only refcounts: %v", c.res.Messages)
	}
	bits := h.refcountBits()
	E := c.cs * 8 / int64(bits)
	rt, err := readTable(f, int64(h.refTableOff), int(int64(h.refTableClusters)*c.cs/8))
	if err != nil {
		return fmt.Errorf("qcow2: read refcount table: %w", err)
	}
	n := int64(len(c.refs))
	inPlace := (n+E-1)/E <= int64(len(rt))
	for i := int64(0); inPlace && i*E < n; i++ {
		if rt[i] != 0 {
			continue
		}
		for cl := i * E; cl < min(n, (i+1)*E); cl++ {
			if c.refs[cl] != 0 {
				inPlace = false
				break
			}
		}
	}
	if inPlace {
		for i, off := range rt {
			if off == 0 {
				continue
			}
			blk := make([]byte, c.cs)
			for k := range E {
				if cl := int64(i)*E + k; cl < n {
					putRef(blk, k, bits, uint64(c.refs[cl]))
				}
			}
			if _, err := f.WriteAt(blk, int64(off)); err != nil {
				return fmt.Errorf("qcow2: write refcount block: %w", err)
			}
		}
		if err := f.Sync(); err != nil {
			return err
		}
	} else if err := rebuildRefcounts(c, rt, E); err != nil {
		return err
	}
	h.incompat &^= incDirty
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], h.incompat)
	if _, err := f.WriteAt(b[:], 72); err != nil {
		return fmt.Errorf("qcow2: write header: %w", err)
	}
	return f.Sync()
}

// rebuildRefcounts writes a new refcount table and blocks past the end of
// the file, covering every cluster the image references plus themselves.
func rebuildRefcounts(c *checker, oldTable []uint64, E int64) error {
	h, f := c.h, c.f
	refs := append([]uint32(nil), c.refs...)
	// The old structure will not be referenced any more.
	for _, off := range oldTable {
		if off != 0 && int64(off)/c.cs < int64(len(refs)) {
			refs[int64(off)/c.cs]--
		}
	}
	for k := range int64(h.refTableClusters) {
		refs[int64(h.refTableOff)/c.cs+k]--
	}
	start := int64(len(refs)) // first cluster of the new structure
	per := c.cs / 8
	var blocks, tc int64
	for {
		total := start + blocks + tc
		nb := (total + E - 1) / E
		ntc := (nb + per - 1) / per
		if nb == blocks && ntc == tc {
			break
		}
		blocks, tc = nb, ntc
	}
	if tc*c.cs > maxRefTableBytes {
		return fmt.Errorf("qcow2: rebuilt refcount table would exceed %d bytes", maxRefTableBytes)
	}
	total := start + blocks + tc
	refs = append(refs, make([]uint32, blocks+tc)...)
	for cl := start; cl < total; cl++ {
		refs[cl] = 1
	}
	bits := h.refcountBits()
	table := make([]uint64, tc*per)
	for i := range blocks {
		blk := make([]byte, c.cs)
		for k := range E {
			if cl := i*E + k; cl < total {
				putRef(blk, k, bits, uint64(refs[cl]))
			}
		}
		off := (start + i) * c.cs
		if _, err := f.WriteAt(blk, off); err != nil {
			return fmt.Errorf("qcow2: write refcount block: %w", err)
		}
		table[i] = uint64(off)
	}
	tableOff := (start + blocks) * c.cs
	if _, err := f.WriteAt(encodeTable(table), tableOff); err != nil {
		return fmt.Errorf("qcow2: write refcount table: %w", err)
	}
	if err := f.Sync(); err != nil {
		return err
	}
	var hdr [12]byte
	binary.BigEndian.PutUint64(hdr[:], uint64(tableOff))
	binary.BigEndian.PutUint32(hdr[8:], uint32(tc))
	if _, err := f.WriteAt(hdr[:], 48); err != nil {
		return fmt.Errorf("qcow2: write header: %w", err)
	}
	h.refTableOff, h.refTableClusters = uint64(tableOff), uint32(tc)
	return f.Sync()
}
