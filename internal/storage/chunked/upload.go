package chunked

import (
	"errors"
	"fmt"
	"time"

	"vdisk/internal/blockdev"
	"vdisk/internal/storage/objstore"
)

// enqueueLocked hands c to the upload workers unless it is clean, queued
// or being uploaded (one PUT at a time per chunk: a chunk modified during
// its upload is queued again when that upload ends, if someone wants it).
func (d *Device) enqueueLocked(c *chunk) {
	if !c.dirty || c.queued || c.uploading {
		return
	}
	c.queued = true
	d.queue = append(d.queue, c)
	d.cond.Broadcast()
}

// uploader is an upload worker; Open starts Options.Parallel of them.
func (d *Device) uploader() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for {
		for len(d.queue) == 0 && !d.closed {
			d.cond.Wait()
		}
		if d.closed {
			return
		}
		c := d.queue[0]
		d.queue[0] = nil
		d.queue = d.queue[1:]
		c.queued = false
		if !c.dirty || c.uploading {
			continue
		}
		d.uploadLocked(c)
	}
}

// uploadLocked stores c's content: a PUT of the whole chunk, or of an
// empty object (a tombstone) when it is all zeros, under a key of this
// upload's own (fence.go). It unlocks mu around store requests.
func (d *Device) uploadLocked(c *chunk) {
	d.account(c, -1)
	c.uploading = true
	d.account(c, 1)
	if l := d.lease; l != nil && !d.opts.zombie && d.fenced == nil && time.Until(l.validUntil) < l.ttl/2 {
		// The lease loop is late (a slow store): renew first rather
		// than start an upload with too short a deadline, or none.
		d.mu.Unlock()
		ctx, cancel := d.reqCtx()
		d.renewLease(ctx, time.Now().Add(-l.ttl/6))
		cancel()
		d.mu.Lock()
	}
	err := d.leaseErrLocked()
	if err == nil && len(c.parts) > 0 {
		err = d.loadLocked(c)
	}
	if err != nil {
		d.uploadDoneLocked(c, 0, false, err)
		return
	}
	// The upload sends buf as it is now; a later write copies it first
	// (ownBuf) and makes c dirty again.
	gen := c.gen
	d.account(c, -1)
	c.dirty = false
	c.fresh = nil
	d.account(c, 1)
	var data []byte
	if !c.zero {
		data = c.buf
		c.upBuf = data
	}
	prev, hasPrev := d.vers[c.idx]
	hasPrev = hasPrev || d.hasObject(c.idx)
	exists := d.hasObject(c.idx)
	var seq uint64
	del := data == nil || blockdev.IsZero(data)
	if !del || exists {
		d.seq++
		seq = d.seq
		d.unsettled[seq] = c.idx
	}
	d.mu.Unlock()

	err = nil
	var etag string
	if seq != 0 {
		ctx, cancel := d.uploadCtx()
		key := objKey(d.kp, c.idx, ver{d.epoch, seq})
		body := data
		if del {
			body = []byte{}
		}
		var in objstore.Info
		in, err = d.store.Put(ctx, key, body, objstore.PutOptions{})
		etag = in.ETag
		cancel()
		err = unavailable(err)
	}
	if d.disk != nil {
		// Before the new ETag is known to readers: they miss until then.
		switch {
		case err == nil && del:
			d.disk.remove(c.idx)
		case err == nil:
			d.disk.put(c.idx, etag, data)
		}
	}

	d.mu.Lock()
	if len(c.upBuf) > 0 && (len(c.buf) == 0 || &c.buf[0] != &c.upBuf[0]) {
		// Copied by a write during the upload (or dropped): nobody
		// else has it.
		d.release(c.upBuf)
	}
	c.upBuf = nil
	if seq != 0 && err == nil {
		// Stored: this upload and the failed ones of the chunk before it
		// (which it shadows) no longer hold the watermark back, and the
		// object it replaces goes once it is committed.
		for s, idx := range d.unsettled {
			if idx == c.idx && s <= seq {
				delete(d.unsettled, s)
			}
		}
		if hasPrev {
			d.garbage = append(d.garbage, garbageKey{key: objKey(d.kp, c.idx, prev), seq: seq})
		}
		d.vers[c.idx] = ver{d.epoch, seq}
	}
	if d.etags != nil && err == nil {
		if del {
			delete(d.etags, c.idx)
		} else {
			d.etags[c.idx] = etag
		}
	}
	d.uploadDoneLocked(c, gen, del, err)
}

// uploadDoneLocked records the end of c's upload of generation gen.
func (d *Device) uploadDoneLocked(c *chunk, gen uint64, deleted bool, err error) {
	d.invalidatePagesLocked(c.idx)
	d.account(c, -1)
	c.uploading = false
	if err != nil {
		c.dirty = true
		d.failSeq++
		c.failSeq, c.lastErr = d.failSeq, err
		if d.degraded == nil {
			d.log.Warn("chunked: upload failed; keeping the data and retrying", "chunk", c.idx, "err", err)
		}
		d.degraded = err
		d.account(c, 1)
		d.cond.Broadcast()
		return
	}
	d.setExists(c.idx, !deleted)
	c.storedGen, c.lastErr = gen, nil
	if d.degraded != nil {
		d.log.Info("chunked: object store reachable again", "chunk", c.idx)
	}
	d.degraded = nil
	if !c.dirty {
		delete(d.dirty, c.idx)
		if deleted {
			d.dropWinLocked(c)
			c.buf, c.zero, c.parts = nil, false, nil
			if c.fetching == nil {
				delete(d.chunks, c.idx)
			}
		}
	}
	d.account(c, 1)
	d.evictLocked()
	d.cond.Broadcast()
}

// loadLocked turns c's parts into a whole buf: the stored object (or
// zeros) with the parts laid over it. It unlocks mu around the GET;
// another goroutine fetching the same chunk is waited for instead.
func (d *Device) loadLocked(c *chunk) error {
	for len(c.parts) > 0 {
		if c.zeroBase {
			d.account(c, -1)
			data := make([]byte, d.chunkLen(c.idx))
			c.parts.overlay(data)
			c.buf, c.parts = data, nil
			d.account(c, 1)
			return nil
		}
		if c.fetching != nil {
			ch := c.fetching
			d.mu.Unlock()
			<-ch
			d.mu.Lock()
			continue
		}
		ch, seq := make(chan struct{}), c.baseSeq
		c.fetching = ch
		d.mu.Unlock()
		n := d.chunkLen(c.idx)
		data, err := d.fetchChunk(c.idx, 0, n, n == d.chunkSize)
		d.mu.Lock()
		c.fetching = nil
		close(ch)
		if err != nil {
			return err
		}
		if len(c.parts) > 0 && c.buf == nil && !c.zero && c.baseSeq == seq {
			d.account(c, -1)
			c.parts.overlay(data)
			c.buf, c.parts = data, nil
			d.account(c, 1)
		} else {
			d.release(data)
		}
	}
	return nil
}

// getChunk reads [off, off+n) of chunk idx's object, checking its size.
func (d *Device) getChunk(idx, off, n int64) ([]byte, error) {
	return d.fetchChunk(idx, off, n, false)
}

// getWindow is getChunk into a buffer from the pool when the range is most
// of a chunk (a sequential reader's window): give it back with release.
func (d *Device) getWindow(idx, off, n int64) ([]byte, error) {
	return d.fetchChunk(idx, off, n, n > d.chunkSize/2)
}

// release gives a window's buffer back to the pool, if it came from there.
func (d *Device) release(b []byte) {
	if int64(cap(b)) >= d.chunkSize {
		select {
		case d.pool <- b[:cap(b)]:
		default:
		}
	}
}

// dropWinLocked forgets c's window.
func (d *Device) dropWinLocked(c *chunk) {
	if c.win != nil {
		d.release(c.win)
		c.win = nil
	}
}

func (d *Device) fetchChunk(idx, off, n int64, pooled bool) ([]byte, error) {
	var data []byte
	if pooled {
		data = d.getBuf()[:n]
	} else {
		data = make([]byte, n)
	}
	if d.disk != nil {
		d.mu.Lock()
		etag := d.etags[idx]
		d.mu.Unlock()
		if etag != "" && d.disk.get(idx, etag, off, data) {
			return data, nil
		}
	}
	ctx, cancel := d.reqCtx()
	defer cancel()
	var (
		key  string
		got  int
		info objstore.Info
		err  error
	)
	for range 3 {
		d.mu.Lock()
		key = d.objKeyLocked(idx)
		d.mu.Unlock()
		got, info, err = objstore.GetInto(ctx, d.store, key, off, data)
		if !errors.Is(err, objstore.ErrNotFound) || !d.opts.ReadOnly {
			break
		}
		// A writer superseded the object since we looked: look again.
		changed, rerr := d.refresh(ctx, idx)
		if rerr != nil {
			err = rerr
			break
		}
		d.mu.Lock()
		has := d.hasObject(idx)
		d.mu.Unlock()
		if !has {
			clear(data)
			return data, nil
		}
		if !changed {
			break
		}
	}
	if errors.Is(err, objstore.ErrNotFound) {
		// Deleted (a version 1 image's writer trimmed it): zeros.
		clear(data)
		return data, nil
	}
	// The last chunk's object may run past the image's end (a shrink
	// that stopped before rewriting it): the bytes there are not read.
	if err == nil && (info.Size < d.chunkLen(idx) || info.Size > d.chunkLen(idx) && idx != d.nchunks-1 || int64(got) != n) {
		err = fmt.Errorf("chunked: chunk object %s has %d bytes (got %d at %d), want %d: %w",
			key, info.Size, got, off, d.chunkLen(idx), blockdev.ErrCorrupt)
	} else if err != nil {
		err = fmt.Errorf("chunked: read chunk %d: %w", idx, unavailable(err))
	}
	if err != nil {
		if pooled {
			d.release(data)
		}
		return nil, err
	}
	switch {
	case d.disk == nil:
	case off == 0 && n == info.Size:
		d.disk.put(idx, info.ETag, data)
	case off%diskPage == 0:
		d.disk.putPages(idx, info.ETag, (d.chunkLen(idx)+diskPage-1)/diskPage, off, data)
	}
	return data, nil
}

// flushChunks returns when every write, trim and zeroing that completed
// before the call is stored, or with an error when an upload failed (the
// data stays cached and is retried).
func (d *Device) flushChunks() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return blockdev.ErrClosed
	}
	if d.opts.ReadOnly || len(d.dirty) == 0 {
		fenced := d.fenced
		d.mu.Unlock()
		return fenced
	}
	type target struct {
		c   *chunk
		gen uint64
	}
	targets := make([]target, 0, len(d.dirty))
	for _, c := range d.dirty {
		targets = append(targets, target{c, c.gen})
	}
	start := d.failSeq
	// No lease check here: the commit after the uploads is what fences
	// a writer that lost the lease (fence.go).
	defer d.mu.Unlock()
	for {
		pending := 0
		var failed *chunk
		for _, t := range targets {
			c := t.c
			if c.storedGen >= t.gen {
				continue
			}
			// Every target gets queued, even after a failure: the ones
			// that work are stored now, not at the next Flush.
			d.enqueueLocked(c)
			pending++
			if c.failSeq > start && !c.uploading && failed == nil {
				failed = c
			}
		}
		if failed != nil {
			return fmt.Errorf("chunked: flush: chunk %d: %w", failed.idx, failed.lastErr)
		}
		if pending == 0 {
			return nil
		}
		if d.closed {
			return blockdev.ErrClosed
		}
		d.cond.Wait()
	}
}

// writeBackLoop uploads chunks left dirty longer than WriteBackDelay, and
// retries failed uploads, until Close.
func (d *Device) writeBackLoop() {
	t := time.NewTicker(max(min(d.opts.WriteBackDelay/2, retryTick), minTick))
	defer t.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-t.C:
		}
		d.mu.Lock()
		now := time.Now()
		for _, c := range d.dirty {
			if c.lastErr != nil || now.Sub(c.since) >= d.opts.WriteBackDelay {
				d.enqueueLocked(c)
			}
		}
		d.mu.Unlock()
	}
}
