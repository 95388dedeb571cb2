package chunked

import (
	"fmt"
	"slices"
	"time"

	"vdisk/internal/blockdev"
)

// account adds (sign 1) or removes (sign -1) c's memory from the Device's
// totals and keeps the clean LRU in step. Call account(c, -1) before
// changing c's state and account(c, 1) after.
func (d *Device) account(c *chunk, sign int64) {
	if c.busy() {
		d.dirtyBytes += sign * c.cost()
		if c.elem != nil {
			d.lru.Remove(c.elem)
			c.elem = nil
		}
		return
	}
	d.cleanBytes += sign * c.cost()
	if sign > 0 && c.cost() > 0 && c.elem == nil {
		c.elem = d.lru.PushFront(c)
	}
	if sign < 0 && c.elem != nil {
		d.lru.Remove(c.elem)
		c.elem = nil
	}
}

// evictLocked drops clean data beyond CacheSize, least recently used first.
func (d *Device) evictLocked() {
	for d.cleanBytes > d.opts.CacheSize {
		e := d.lru.Back()
		if e == nil {
			return
		}
		c, ok := e.Value.(*chunk)
		if !ok {
			d.dropPageLocked(e.Value.(*page))
			continue
		}
		d.account(c, -1)
		d.dropWinLocked(c)
		d.dropBufLocked(c)
		c.parts = nil
		if c.fetching == nil {
			delete(d.chunks, c.idx)
		}
	}
}

// allocBuf returns n bytes with room for capacity, not cleared: from the
// pool of chunk buffers when capacity is a chunk.
func (d *Device) allocBuf(n, capacity int64) []byte {
	if capacity == d.chunkSize {
		return d.getBuf()[:n]
	}
	return make([]byte, n, capacity)
}

// getBuf returns a chunk buffer, not cleared: a free one if there is one.
func (d *Device) getBuf() []byte {
	select {
	case b := <-d.pool:
		return b
	default:
		return make([]byte, d.chunkSize)
	}
}

// dropBufLocked forgets c's buf, giving it to the pool unless an upload
// is sending it.
func (d *Device) dropBufLocked(c *chunk) {
	if c.buf != nil && (len(c.upBuf) == 0 || &c.buf[0] != &c.upBuf[0]) {
		d.release(c.buf)
	}
	c.buf = nil
}

func (d *Device) touch(c *chunk) {
	if c.elem != nil {
		d.lru.MoveToFront(c.elem)
	}
}

// writableLocked says why writes must fail now, or nil.
func (d *Device) writableLocked() error {
	switch {
	case d.closed:
		return blockdev.ErrClosed
	case d.opts.ReadOnly:
		return blockdev.ErrReadOnly
	case d.fenced != nil:
		return d.fenced
	case d.degraded != nil:
		return fmt.Errorf("chunked: degraded: %w", d.degraded)
	}
	return nil
}

// getChunkLocked returns chunk idx, ready to be modified with room under
// MaxDirty for the memory the change adds, need(c) (c is nil for a chunk
// not cached). A dirty or uploading chunk is charged what it grows by: 0
// unless it holds parts. It waits for uploads while the dirty cache is
// full.
func (d *Device) getChunkLocked(idx int64, need func(c *chunk) int64) (*chunk, error) {
	for {
		if err := d.writableLocked(); err != nil {
			return nil, err
		}
		c := d.chunks[idx]
		n := need(c)
		if c != nil && c.busy() && n == 0 {
			return c, nil
		}
		if d.dirtyBytes == 0 || d.dirtyBytes+n <= d.opts.MaxDirty {
			if c == nil {
				c = &chunk{idx: idx}
				d.chunks[idx] = c
			}
			return c, nil
		}
		d.keepUploadersBusyLocked()
		d.cond.Wait()
	}
}

// keepUploadersBusyLocked runs while the dirty cache is full: it tops the
// uploads under way (queued or running) up to Parallel with the dirty
// chunks waited on longest. A chunk still being written (a sequential
// writer's current one) is left alone while enough others are uploading,
// so that it is stored once, complete.
func (d *Device) keepUploadersBusyLocked() {
	pending := 0
	var idle []*chunk
	for _, c := range d.dirty {
		if c.queued || c.uploading {
			pending++
		} else if c.dirty {
			idle = append(idle, c)
		}
	}
	if pending >= d.opts.Parallel {
		return
	}
	slices.SortFunc(idle, func(a, b *chunk) int { return a.since.Compare(b.since) })
	for _, c := range idle[:min(len(idle), d.opts.Parallel-pending)] {
		d.enqueueLocked(c)
	}
}

// markDirtyLocked records a modification of c (account(c, -1) was called
// before the change).
func (d *Device) markDirtyLocked(c *chunk) {
	d.invalidatePagesLocked(c.idx)
	c.gen++
	if !c.dirty {
		c.dirty = true
		if !c.uploading {
			c.since = time.Now()
		}
	}
	d.dirty[c.idx] = c
	d.account(c, 1)
}

// WriteAt writes p at off into the cache. It blocks while the dirty cache
// is full, and fails with an I/O error while the Device is degraded.
func (d *Device) WriteAt(p []byte, off int64) (int, error) {
	if err := blockdev.CheckRange(off, int64(len(p)), d.man.Size); err != nil {
		return 0, err
	}
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		idx, co := pos/d.chunkSize, pos%d.chunkSize
		n := int(min(int64(len(p)-done), d.chunkLen(idx)-co))
		if err := d.writeChunk(idx, co, p[done:done+n]); err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

func (d *Device) writeChunk(idx, co int64, p []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	cl := d.chunkLen(idx)
	end := co + int64(len(p))
	// A write goes into buf when the chunk has one that is dirty already,
	// or clean with room in the dirty cache for all of it; otherwise into
	// parts, which cost what they hold (random small writes).
	useBuf := func(c *chunk) bool {
		return c != nil && c.buf != nil &&
			(c.busy() || d.dirtyBytes == 0 || d.dirtyBytes+int64(len(c.buf)) <= d.opts.MaxDirty)
	}
	c, err := d.getChunkLocked(idx, func(c *chunk) int64 {
		switch {
		case useBuf(c) && c.busy():
			return 0
		case useBuf(c):
			return int64(len(c.buf)) // clean cached data becomes dirty
		case c == nil:
			return parts(nil).growth(co, end, cl)
		default:
			return c.parts.growth(co, end, cl)
		}
	})
	if err != nil {
		return err
	}
	d.account(c, -1)
	if useBuf(c) {
		c.ownBuf(d.allocBuf)
		copy(c.buf[co:], p)
	} else {
		if len(c.parts) == 0 {
			// The parts lie over zeros for a zero chunk or one with no
			// object, over the stored object otherwise. A clean cached
			// copy of the object is dropped: no room to dirty all of it.
			c.zeroBase = c.zero || !d.hasObject(idx)
			c.baseSeq++
			d.dropBufLocked(c)
			c.zero = false
		}
		d.dropWinLocked(c)
		c.parts = c.parts.write(co, p, cl, d.allocBuf)
		if pt := c.parts[0]; len(c.parts) == 1 && pt.off == 0 && int64(len(pt.data)) == cl {
			// Written over in full: no need for the stored object.
			c.buf, c.parts = pt.data, nil
		}
	}
	c.fresh = c.fresh.add(co, end)
	d.markDirtyLocked(c)
	if c.fresh.covers(0, cl) {
		// Written over in full since its last upload (a sequential
		// writer is done with it): no reason to wait.
		d.enqueueLocked(c)
	}
	return nil
}

// zeroChunkLocked makes chunk idx read as zeros, to be deleted from the
// store.
func (d *Device) zeroChunk(idx int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if c := d.chunks[idx]; !d.hasObject(idx) && (c == nil || !c.busy()) {
		if err := d.writableLocked(); err != nil {
			return err
		}
		// Nothing stored, nothing pending: it reads as zeros already.
		if c != nil {
			d.account(c, -1)
			d.dropWinLocked(c)
			c.buf, c.parts = nil, nil
			if c.fetching == nil {
				delete(d.chunks, idx)
			}
		}
		return nil
	}
	c, err := d.getChunkLocked(idx, func(c *chunk) int64 {
		if c != nil && c.busy() {
			return 0 // it shrinks
		}
		return zeroEntryCost
	})
	if err != nil {
		return err
	}
	d.account(c, -1)
	d.dropWinLocked(c)
	c.buf, c.parts, c.zero, c.fresh = nil, nil, true, nil
	d.markDirtyLocked(c)
	return nil
}

// Trim discards [off, off+n): whole chunks are deleted from the store,
// partial ones get zeros written over the range.
func (d *Device) Trim(off, n int64) error {
	if err := blockdev.CheckRange(off, n, d.man.Size); err != nil {
		return err
	}
	for n > 0 {
		idx, co := off/d.chunkSize, off%d.chunkSize
		c := min(n, d.chunkLen(idx)-co)
		var err error
		if co == 0 && c == d.chunkLen(idx) {
			err = d.zeroChunk(idx)
		} else {
			err = d.writeChunk(idx, co, make([]byte, c))
		}
		if err != nil {
			return err
		}
		off += c
		n -= c
	}
	return nil
}

// WriteZeroes makes [off, off+n) read as zeros. Chunks that end up all
// zeros are deleted from the store whether or not mayTrim allows it: an
// object store has no allocated-but-zero state worth keeping.
func (d *Device) WriteZeroes(off, n int64, mayTrim bool) error {
	return d.Trim(off, n)
}
