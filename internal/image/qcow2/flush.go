package qcow2

import (
	"fmt"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// Flush makes every completed write durable. Metadata goes out in the
// order that keeps the image consistent after a crash: data and refcount
// increments, then L2 tables, then the L1 table; clusters freed since the
// last flush are released only after that.
func (img *Image) Flush() error {
	if img.closed.Load() {
		return blockdev.ErrClosed
	}
	if img.readOnly {
		return nil
	}
	return img.flush(false)
}

// flush writes all metadata; final (from Close) also writes lazy refcounts
// and clears the dirty bit.
func (img *Image) flush(final bool) error {
	img.mu.Lock()
	if !final && img.metadataClean() {
		// Only data changed (overwrites of allocated clusters): one
		// fdatasync, without holding up other requests' lookups.
		img.mu.Unlock()
		return img.sync()
	}
	err := img.writeMetadata(final || !img.lazy)
	img.readyFree = append(img.readyFree, img.pendingFree...)
	img.pendingFree = nil
	ready := len(img.readyFree) > 0
	img.mu.Unlock()
	if err != nil {
		return err
	}
	if ready {
		// Release freed clusters with no transfer in flight, so none reads
		// or writes a cluster that is being reused.
		img.ioMu.Lock()
		img.mu.Lock()
		err = img.applyFrees()
		img.mu.Unlock()
		img.ioMu.Unlock()
		if err != nil {
			return err
		}
	}
	if !final {
		return nil
	}
	img.mu.Lock()
	defer img.mu.Unlock()
	if err := img.syncRefcounts(true); err != nil {
		return err
	}
	if img.markedDirty {
		img.h.incompat &^= incDirty
		if err := img.writeHeaderField(72, img.h.incompat); err != nil {
			return err
		}
		img.markedDirty = false
	}
	return nil
}

// metadataClean reports, with mu held, whether no metadata waits to be
// written and no freed cluster waits to be released.
func (img *Image) metadataClean() bool {
	return !img.l1Dirty && !img.refTableDirty && len(img.pendingFree) == 0 && len(img.readyFree) == 0 &&
		len(img.l2c.dirtyTables()) == 0 && (img.lazy || len(img.rbc.dirtyTables()) == 0)
}

// writeMetadata writes refcounts (unless lazy and !refcounts), L2 tables
// and the L1 table, syncing between the stages. It runs with mu held.
func (img *Image) writeMetadata(refcounts bool) error {
	if err := img.syncRefcounts(refcounts); err != nil {
		return err
	}
	dirty := img.l2c.dirtyTables()
	for _, t := range dirty {
		if err := img.writeTable(t); err != nil {
			return err
		}
	}
	if len(dirty) > 0 {
		if err := img.sync(); err != nil {
			return err
		}
	}
	if img.l1Dirty {
		if _, err := img.f.WriteAt(encodeTable(img.l1), int64(img.h.l1Off)); err != nil {
			return fmt.Errorf("qcow2: write L1 table: %w", err)
		}
		if err := img.sync(); err != nil {
			return err
		}
		img.l1Dirty = false
	}
	return nil
}

// applyFrees drops the references queued in readyFree. It runs with ioMu
// held exclusively and mu held.
func (img *Image) applyFrees() error {
	for len(img.readyFree) > 0 {
		cl := img.readyFree[0]
		if err := img.unref(cl); err != nil {
			return err
		}
		img.readyFree = img.readyFree[1:]
	}
	img.readyFree = nil
	return nil
}

// punch releases the storage of [off, off+n) in the file (or zeroes it,
// see image.Punch). It is best-effort: no table references the bytes any
// more.
func (img *Image) punch(off, n int64) {
	if err := image.Punch(img.f, off, n); err != nil {
		img.log.Debug("qcow2: punch hole", "off", off, "len", n, "err", err)
	}
}
