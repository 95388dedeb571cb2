package qcow2

import "vdisk/internal/blockdev"

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
// referenced are released only after that), so a crash part way leaves
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
	for i := range int64(len(img.l1)) {
		if err := img.emptyTable(i); err != nil {
			return err
		}
	}
	return img.flush(false)
}

// emptyTable drops every entry of the L2 table of L1 index i.
func (img *Image) emptyTable(i int64) error {
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
	for j := range img.l2n {
		e, bm := img.entryAt(t, j)
		if e == 0 && bm == 0 {
			continue
		}
		img.setEntry(t, j, 0, 0)
		img.dropEntry(e)
	}
	img.zc.forget()
	return nil
}
