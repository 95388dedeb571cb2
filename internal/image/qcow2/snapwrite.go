package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"time"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// ErrNoSnapshot is returned for a snapshot name or id the image lacks.
var ErrNoSnapshot = errors.New("no such snapshot")

// Internal snapshots, as qemu-img snapshot -c/-a/-d makes them. Each
// operation waits for I/O in flight, brings the file to a consistent
// state, and orders its writes so that a crash at any point leaves at
// worst leaked clusters (which check --repair leaks mends): reference
// counts grow before anything points at the clusters, and the header
// switches to a new snapshot table in one sector write.

// Snapshots lists the image's internal snapshots.
func (img *Image) Snapshots() ([]image.Snapshot, error) {
	img.mu.Lock()
	defer img.mu.Unlock()
	snaps, err := readSnapshots(img.f, img.h, img.fileEnd)
	if err != nil {
		return nil, err
	}
	out := make([]image.Snapshot, len(snaps))
	for i, s := range snaps {
		out[i] = s.info
	}
	return out, nil
}

// CreateSnapshot records the disk as it is now under name: later writes
// copy the clusters they change, and ApplySnapshot brings this state back.
func (img *Image) CreateSnapshot(name string) (image.Snapshot, error) {
	var info image.Snapshot
	err := img.snapshotOp(func(snaps []snapshot) error {
		if name == "" || len(name) > 0xffff {
			return fmt.Errorf("qcow2: snapshot name %q: want 1 to 65535 bytes", name)
		}
		id := 1
		for _, s := range snaps {
			if s.info.Name == name || s.info.ID == name {
				return fmt.Errorf("qcow2: a snapshot %q exists already (id %s)", name, s.info.ID)
			}
			if n, err := strconv.Atoi(s.info.ID); err == nil && n >= id {
				id = n + 1
			}
		}
		if len(snaps) >= maxSnapshots {
			return fmt.Errorf("qcow2: the image has %d snapshots, the most it may", len(snaps))
		}
		if img.maxRefcount() < 2 {
			return fmt.Errorf("qcow2: 1-bit refcounts cannot count a cluster shared with a snapshot: %w", blockdev.ErrNotSupported)
		}
		// The snapshot shares every cluster of the active disk: one more
		// reference each, and none of them is the active disk's alone
		// any more.
		l1 := append([]uint64(nil), img.l1...)
		if err := img.addRefs(l1); err != nil {
			return err
		}
		if err := img.writeMetadata(true); err != nil {
			return err
		}
		l1Off, err := img.writeL1Copy(l1)
		if err != nil {
			return err
		}
		now := time.Now()
		info = image.Snapshot{ID: strconv.Itoa(id), Name: name, DateSec: now.Unix(), DateNsec: int64(now.Nanosecond()), VirtualSize: img.Size()}
		entry := encodeSnapshot(l1Off, uint32(len(l1)), info)
		return img.writeSnapshotTable(append(tableBytes(snaps), entry...), len(snaps)+1, snaps)
	})
	return info, err
}

// ApplySnapshot makes the disk what it was when the snapshot (by name or
// id) was taken, discarding the active disk's changes since, as qemu-img
// snapshot -a does. The snapshot stays.
func (img *Image) ApplySnapshot(name string) error {
	return img.snapshotOp(func(snaps []snapshot) error {
		s, _, err := findSnapshot(snaps, name)
		if err != nil {
			return err
		}
		l1, err := img.readSnapshotL1(s)
		if err != nil {
			return err
		}
		size := img.Size()
		if s.info.VirtualSize > 0 {
			size = s.info.VirtualSize
		}
		nh := *img.h
		nh.size = uint64(size)
		need := max(int64(nh.l1Needed()), int64(len(l1)))
		if need > int64(len(img.l1)) {
			if err := img.growL1(need); err != nil {
				return err
			}
		}
		// The snapshot's clusters gain the active disk's reference before
		// the active L1 table points at them; the old active clusters
		// lose theirs after.
		if err := img.addRefs(l1); err != nil {
			return err
		}
		if err := img.writeMetadata(true); err != nil {
			return err
		}
		old := append([]uint64(nil), img.l1...)
		for i := range img.l1 {
			img.l1[i] = 0
			if i < len(l1) {
				img.l1[i] = l1[i] &^ flagCopied
			}
		}
		img.l1Dirty = true
		if err := img.writeMetadata(true); err != nil {
			return err
		}
		if size != img.Size() {
			if err := img.writeHeaderField(24, uint64(size)); err != nil {
				return err
			}
			img.h.size = uint64(size)
			img.vsize.Store(size)
		}
		if err := img.dropRefs(old); err != nil {
			return err
		}
		return img.fixCopied()
	})
}

// DeleteSnapshot removes the snapshot (by name or id) and frees the
// clusters only it used.
func (img *Image) DeleteSnapshot(name string) error {
	return img.snapshotOp(func(snaps []snapshot) error {
		s, i, err := findSnapshot(snaps, name)
		if err != nil {
			return err
		}
		l1, err := img.readSnapshotL1(s)
		if err != nil {
			return err
		}
		rest := append(append([]snapshot(nil), snaps[:i]...), snaps[i+1:]...)
		if err := img.writeSnapshotTable(tableBytes(rest), len(rest), snaps); err != nil {
			return err
		}
		// Gone from the table: now its references can go.
		img.freeBytes(int64(s.l1Off), int64(s.l1Size)*8)
		if err := img.dropRefs(l1); err != nil {
			return err
		}
		return img.fixCopied()
	})
}

// snapshotOp runs op with no I/O in flight, the metadata on disk and the
// snapshot table read, then writes everything op changed and starts the
// table caches afresh (op may have freed cached tables).
func (img *Image) snapshotOp(op func([]snapshot) error) error {
	unlock, err := img.exclusive()
	if err != nil {
		return err
	}
	defer unlock()
	if err := img.settle(); err != nil {
		return err
	}
	snaps, err := readSnapshots(img.f, img.h, img.fileEnd)
	if err != nil {
		return err
	}
	if err := op(snaps); err != nil {
		return err
	}
	if err := img.settle(); err != nil {
		return err
	}
	img.l2c = newCache(img.l2c.max)
	img.zc.forget()
	return nil
}

// settle writes every metadata change and releases the clusters freed so
// far. It runs with ioMu held exclusively and mu held.
func (img *Image) settle() error {
	if err := img.writeMetadata(true); err != nil {
		return err
	}
	img.readyFree = append(img.readyFree, img.pendingFree...)
	img.pendingFree = nil
	if err := img.applyFrees(); err != nil {
		return err
	}
	return img.writeMetadata(true)
}

// addRefs adds a reference to every cluster the L1 table l1 uses (its L2
// tables and their data clusters) and clears their COPIED flags in the
// tables, which are shared from now on.
func (img *Image) addRefs(l1 []uint64) error {
	return img.walkL1(l1, true, func(cl int64) error {
		rc, err := img.refcount(cl)
		if err != nil {
			return err
		}
		if rc == 0 {
			return corruptf("cluster %d is in use with refcount 0", cl)
		}
		if rc >= img.maxRefcount() {
			return fmt.Errorf("qcow2: cluster %d has %d references, the most %d-bit refcounts hold", cl, rc, img.h.refcountBits())
		}
		return img.setRefcount(cl, rc+1)
	})
}

// dropRefs removes the references of the L1 table l1 to its L2 tables and
// data clusters, freeing those nothing else uses.
func (img *Image) dropRefs(l1 []uint64) error {
	if err := img.walkL1(l1, false, func(cl int64) error {
		img.readyFree = append(img.readyFree, cl)
		return nil
	}); err != nil {
		return err
	}
	// Cached tables must be on disk before any of them is freed.
	if err := img.writeMetadata(true); err != nil {
		return err
	}
	img.l2c = newCache(img.l2c.max)
	return img.applyFrees()
}

// walkL1 calls ref for each cluster l1 references: every data cluster
// (each host cluster a compressed one spans) and every L2 table. With
// share, it clears the COPIED flags of the entries it passes.
func (img *Image) walkL1(l1 []uint64, share bool, ref func(cl int64) error) error {
	for i, e1 := range l1 {
		off2 := int64(e1 & offsetMask)
		if off2 == 0 {
			continue
		}
		t, err := img.loadL2(off2)
		if err != nil {
			return err
		}
		for j := range img.l2n {
			e, bm := img.entryAt(t, j)
			if e&flagCompressed != 0 {
				off, n := img.compressed(e)
				for c := off / img.cs; c <= (off+n-1)/img.cs; c++ {
					if err := ref(c); err != nil {
						return err
					}
				}
				continue
			}
			off := int64(e & offsetMask)
			if off == 0 {
				continue
			}
			if err := ref(off / img.cs); err != nil {
				return err
			}
			if share && e&flagCopied != 0 {
				img.setEntry(t, j, e&^flagCopied, bm)
			}
		}
		if err := ref(off2 / img.cs); err != nil {
			return err
		}
		if share && i < len(img.l1) && img.l1[i] == e1 && e1&flagCopied != 0 {
			img.l1[i] &^= flagCopied
			img.l1Dirty = true
		}
	}
	return nil
}

// fixCopied sets the COPIED flag of every active L1 and L2 entry whose
// cluster has exactly one reference, and clears it elsewhere.
func (img *Image) fixCopied() error {
	for i, e1 := range img.l1 {
		off2 := int64(e1 & offsetMask)
		if off2 == 0 {
			continue
		}
		rc, err := img.refcount(off2 / img.cs)
		if err != nil {
			return err
		}
		if want := withCopied(e1, rc == 1); want != e1 {
			img.l1[i] = want
			img.l1Dirty = true
		}
		if rc != 1 {
			continue // a shared table: its entries' flags stay clear
		}
		t, err := img.loadL2(off2)
		if err != nil {
			return err
		}
		for j := range img.l2n {
			e, bm := img.entryAt(t, j)
			off := int64(e & offsetMask)
			if e&flagCompressed != 0 || off == 0 {
				continue
			}
			rc, err := img.refcount(off / img.cs)
			if err != nil {
				return err
			}
			if want := withCopied(e, rc == 1); want != e {
				img.setEntry(t, j, want, bm)
			}
		}
	}
	return nil
}

func withCopied(e uint64, on bool) uint64 {
	if on {
		return e | flagCopied
	}
	return e &^ flagCopied
}

// maxRefcount is the largest refcount the image's refcount width holds.
func (img *Image) maxRefcount() uint64 {
	if img.h.refcountBits() == 64 {
		return ^uint64(0)
	}
	return uint64(1)<<img.h.refcountBits() - 1
}

// readSnapshotL1 reads a snapshot's L1 table.
func (img *Image) readSnapshotL1(s snapshot) ([]uint64, error) {
	if int64(s.l1Off)+int64(s.l1Size)*8 > img.fileEnd {
		return nil, corruptf("snapshot %q L1 table past the end of the file", s.info.Name)
	}
	l1, err := readTable(img.f, int64(s.l1Off), int(s.l1Size))
	if err != nil {
		return nil, fmt.Errorf("qcow2: read the L1 table of snapshot %q: %w", s.info.Name, err)
	}
	return l1, nil
}

// switchTable points the header at a new table in one 12-byte write at
// field (a 32-bit entry count, then the 64-bit offset: the L1 table's at
// 36, the snapshot table's at 60), after the table and the refcounts of
// its clusters are on disk, and syncs.
func (img *Image) switchTable(field int64, count uint32, off int64, what string) error {
	if err := img.syncRefcounts(true); err != nil {
		return err
	}
	var b [12]byte
	binary.BigEndian.PutUint32(b[:4], count)
	binary.BigEndian.PutUint64(b[4:], uint64(off))
	if _, err := img.f.WriteAt(b[:], field); err != nil {
		return fmt.Errorf("qcow2: switch to the new %s: %w", what, err)
	}
	return img.sync()
}

// freeBytes queues the release of the clusters of n bytes of metadata at
// off (a table the header no longer points at).
func (img *Image) freeBytes(off, n int64) {
	for c := range (n + img.cs - 1) / img.cs {
		img.readyFree = append(img.readyFree, off/img.cs+c)
	}
}

// writeL1Copy writes l1 into new clusters and returns their offset.
func (img *Image) writeL1Copy(l1 []uint64) (int64, error) {
	n := max(1, (int64(len(l1))*8+img.cs-1)/img.cs)
	if n > img.rbEntries()/2 {
		return 0, fmt.Errorf("qcow2: an L1 table of %d clusters is more than %d-byte clusters and these refcount blocks allow; use larger clusters", n, img.cs)
	}
	off, err := img.alloc(n)
	if err != nil {
		return 0, err
	}
	buf := make([]byte, n*img.cs)
	copy(buf, encodeTable(l1))
	if _, err := img.f.WriteAt(buf, off); err != nil {
		return 0, fmt.Errorf("qcow2: write an L1 table: %w", err)
	}
	return off, nil
}

// writeSnapshotTable writes a new snapshot table of n entries into new
// clusters, switches the header to it and frees the old one, which holds
// old.
func (img *Image) writeSnapshotTable(table []byte, n int, old []snapshot) error {
	var off int64
	if n > 0 {
		c := (int64(len(table)) + img.cs - 1) / img.cs
		if c > img.rbEntries()/2 {
			return fmt.Errorf("qcow2: a snapshot table of %d clusters is too large for these refcount blocks", c)
		}
		var err error
		if off, err = img.alloc(c); err != nil {
			return err
		}
		buf := make([]byte, c*img.cs)
		copy(buf, table)
		if _, err := img.f.WriteAt(buf, off); err != nil {
			return fmt.Errorf("qcow2: write the snapshot table: %w", err)
		}
	}
	if err := img.switchTable(60, uint32(n), off, "snapshot table"); err != nil {
		return err
	}
	if img.h.nbSnapshots > 0 {
		img.freeBytes(int64(img.h.snapshotsOff), int64(len(tableBytes(old))))
	}
	img.h.nbSnapshots, img.h.snapshotsOff = uint32(n), uint64(off)
	return nil
}

// tableBytes returns the stored entries of snaps, one after another.
func tableBytes(snaps []snapshot) []byte {
	var b []byte
	for _, s := range snaps {
		b = append(b, s.raw...)
		for len(b)%8 != 0 {
			b = append(b, 0)
		}
	}
	return b
}

// encodeSnapshot returns a snapshot table entry with 16 bytes of extra
// data (the 64-bit VM state size, 0, and the disk size), padded to 8.
func encodeSnapshot(l1Off int64, l1Size uint32, s image.Snapshot) []byte {
	be := binary.BigEndian
	b := make([]byte, 56, 56+len(s.ID)+len(s.Name)+7)
	be.PutUint64(b, uint64(l1Off))
	be.PutUint32(b[8:], l1Size)
	be.PutUint16(b[12:], uint16(len(s.ID)))
	be.PutUint16(b[14:], uint16(len(s.Name)))
	be.PutUint32(b[16:], uint32(s.DateSec))
	be.PutUint32(b[20:], uint32(s.DateNsec))
	be.PutUint32(b[36:], 16)
	be.PutUint64(b[48:], uint64(s.VirtualSize))
	b = append(append(b, s.ID...), s.Name...)
	for len(b)%8 != 0 {
		b = append(b, 0)
	}
	return b
}

// findSnapshot returns the snapshot whose id or name is name.
func findSnapshot(snaps []snapshot, name string) (snapshot, int, error) {
	for i, s := range snaps {
		if s.info.ID == name {
			return s, i, nil
		}
	}
	for i, s := range snaps {
		if s.info.Name == name {
			return s, i, nil
		}
	}
	return snapshot{}, 0, fmt.Errorf("qcow2: snapshot %q: %w", name, ErrNoSnapshot)
}
