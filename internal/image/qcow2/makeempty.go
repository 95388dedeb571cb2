package qcow2

import (
	"slices"

	"vdisk/internal/blockdev"
)

// MakeEmpty drops every cluster of the active disk, so that all of it
// reads from the backing file again (or as zeroes without one): qemu's
// bdrv_make_empty, which vdisk commit runs on the top image once its data
// is in the backing file. Every L2 entry becomes unallocated (data,
// compressed and zero clusters alike); the L2 tables themselves stay, and
// internal snapshots keep the clusters they share. It flushes before it
// returns.
//
// The entries are dropped in memory and written out by the usual flush
// order (L2 tables, then the L1 table, each synced; the clusters they
// referenced are released only after that, a run of free clusters
// punched at a time), so a crash part way leaves
// each cluster either still in this image or fallen through to the
// backing file, and at worst leaked clusters (qemu-img check exit 3),
// never a reference to a freed cluster. Callers empty an image only when
// its backing file holds the same bytes, so either way it reads the same.
func (img *Image) MakeEmpty() error {
	if img.readOnly {
		return blockdev.ErrReadOnly
	}
	if img.closed.Load() {
		return blockdev.ErrClosed
	}
	var freed []int64
	for i := range int64(len(img.l1)) {
		if err := img.emptyTable(i, &freed); err != nil {
			return err
		}
	}
	// The L2 tables and the L1 table on disk first; only then the
	// clusters they referenced are released.
	if err := img.flush(false); err != nil {
		return err
	}
	if err := img.release(freed); err != nil {
		return err
	}
	return img.flush(false)
}

// release drops one reference to each host cluster of cls, as unref does,
// but punches the clusters that become free a run at a time rather than
// one by one (an emptied image frees them all).
func (img *Image) release(cls []int64) error {
	unlock, err := img.exclusive()
	if err != nil {
		return err
	}
	defer unlock()
	slices.Sort(cls)
	start, end := int64(-1), int64(-1)
	punch := func() {
		if start >= 0 {
			img.punch(start*img.cs, (end-start)*img.cs)
		}
	}
	for _, cl := range cls {
		rc, err := img.decRef(cl)
		if err != nil {
			return err
		}
		if rc > 1 {
			continue
		}
		img.freeHint = min(img.freeHint, cl)
		if cl != end {
			punch()
			start = cl
		}
		end = cl + 1
	}
	punch()
	return nil
}

// emptyTable drops every entry of the L2 table of L1 index i, adding the
// host clusters they referenced to freed (not to pendingFree: MakeEmpty
// releases them itself).
func (img *Image) emptyTable(i int64, freed *[]int64) error {
	unlock, err := img.exclusive()
	if err != nil {
		return err
	}
	defer unlock()
	if i >= int64(len(img.l1)) || img.l1[i]&offsetMask == 0 {
		return nil
	}
	t, err := img.l2Table(i, false)
	if err != nil || t == nil {
		return err
	}
	busy := false
	for j := range img.l2n {
		if e, bm := img.entryAt(t, j); e != 0 || bm != 0 {
			busy = true
			break
		}
	}
	if !busy {
		return nil
	}
	if t, err = img.l2Table(i, true); err != nil { // copied if a snapshot shares it
		return err
	}
	n := len(img.pendingFree)
	for j := range img.l2n {
		e, bm := img.entryAt(t, j)
		if e == 0 && bm == 0 {
			continue
		}
		img.setEntry(t, j, 0, 0)
		img.dropEntry(e)
	}
	*freed = append(*freed, img.pendingFree[n:]...)
	img.pendingFree = img.pendingFree[:n]
	img.zc.forget()
	return nil
}
