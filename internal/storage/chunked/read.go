package chunked

import (
	"vdisk/internal/blockdev"
)

// ReadAt reads len(p) bytes at off: from the cache where it has them,
// otherwise by ranged GETs of just the bytes needed (more when the reads
// are sequential).
func (d *Device) ReadAt(p []byte, off int64) (int, error) {
	if err := blockdev.CheckRange(off, int64(len(p)), d.man.Size); err != nil {
		return 0, err
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return 0, blockdev.ErrClosed
	}
	ra := d.readAheadLocked(off, int64(len(p)))
	if end := off + int64(len(p)); ra > 0 && end < d.man.Size {
		// A sequential reader will want the chunks within its read-ahead:
		// fetch them in the background, several at a time.
		for next := (end-1)/d.chunkSize + 1; next*d.chunkSize < end+ra && next < d.nchunks; next++ {
			if !d.prefetchLocked(next) {
				break
			}
		}
	}
	d.mu.Unlock()
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		idx, co := pos/d.chunkSize, pos%d.chunkSize
		n := int(min(int64(len(p)-done), d.chunkLen(idx)-co))
		if err := d.readChunk(idx, co, p[done:done+n], ra); err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

// readAheadLocked updates the sequential-read detector and returns how
// many bytes a fetch for this read should cover past its end.
func (d *Device) readAheadLocked(off, n int64) int64 {
	if d.opts.ReadAhead < 0 {
		return 0
	}
	// Parallel readers of one stream arrive slightly out of order: near
	// the last read's end counts as sequential.
	if off >= d.seqEnd-d.opts.ReadAhead && off <= d.seqEnd+d.opts.ReadAhead && d.seqEnd > 0 {
		d.raSize = min(max(d.raSize*2, minReadAhead), d.opts.ReadAhead)
	} else {
		d.raSize = 0
	}
	d.seqEnd = max(off+n, d.seqEnd)
	if d.raSize == 0 {
		d.seqEnd = off + n
	}
	return d.raSize
}

// readChunk fills p from chunk idx at co.
func (d *Device) readChunk(idx, co int64, p []byte, ra int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	end := co + int64(len(p))
	for {
		if d.closed {
			return blockdev.ErrClosed
		}
		c := d.chunks[idx]
		if c != nil {
			switch {
			case c.zero:
				clear(p)
				return nil
			case c.buf != nil:
				copy(p, c.buf[co:end])
				d.touch(c)
				return nil
			case len(c.parts) > 0:
				if pt := c.parts.covering(co, end); pt != nil {
					copy(p, pt.data[co-pt.off:])
					return nil
				}
				// Partly written: the stored range (or zeros) with the
				// parts over it, unless c changed meanwhile.
				data, seq := make([]byte, end-co), c.baseSeq
				if !c.zeroBase {
					d.mu.Unlock()
					var err error
					data, err = d.getChunk(idx, co, end-co)
					d.mu.Lock()
					if err != nil {
						return err
					}
				}
				if d.chunks[idx] == c && c.buf == nil && !c.zero && len(c.parts) > 0 && c.baseSeq == seq {
					copy(p, data)
					for _, pt := range c.parts {
						if s, e := max(pt.off, co), min(pt.end(), end); s < e {
							copy(p[s-co:e-co], pt.data[s-pt.off:])
						}
					}
					return nil
				}
				continue
			case c.win != nil && c.winOff <= co && end <= c.winOff+int64(len(c.win)):
				copy(p, c.win[co-c.winOff:])
				d.touch(c)
				return nil
			case c.fetching != nil:
				ch := c.fetching
				d.mu.Unlock()
				<-ch
				d.mu.Lock()
				continue
			}
		}
		if !d.hasObject(idx) {
			clear(p)
			return nil
		}
		if ra == 0 {
			// Not sequential: just the pages it needs.
			if ok, err := d.readPagesLocked(idx, co, p); ok {
				return err
			}
			continue
		}
		if c == nil {
			c = &chunk{idx: idx}
			d.chunks[idx] = c
		}
		if err := d.fetchWindowLocked(c, co, min(end+ra, d.chunkLen(idx))); err != nil {
			return err
		}
	}
}

// fetchWindowLocked GETs [start, end) of c's object into c.win, unless c
// changed meanwhile. It unlocks mu around the GET.
func (d *Device) fetchWindowLocked(c *chunk, start, end int64) error {
	ch, gen := make(chan struct{}), c.gen
	c.fetching = ch
	d.mu.Unlock()
	data, err := d.getWindow(c.idx, start, end-start)
	d.mu.Lock()
	return d.fetchDoneLocked(c, ch, gen, start, data, err)
}

// fetchDoneLocked ends a window fetch begun at generation gen.
func (d *Device) fetchDoneLocked(c *chunk, ch chan struct{}, gen uint64, start int64, data []byte, err error) error {
	c.fetching = nil
	close(ch)
	if err != nil {
		if d.chunks[c.idx] == c && c.cost() == 0 && !c.busy() {
			delete(d.chunks, c.idx)
		}
		return err
	}
	if d.chunks[c.idx] != c || c.gen != gen || c.buf != nil || c.zero || len(c.parts) > 0 {
		// Replaced or written meanwhile: its data is newer.
		d.release(data)
		return nil
	}
	d.account(c, -1)
	d.dropWinLocked(c)
	c.win, c.winOff = data, start
	d.account(c, 1)
	d.evictLocked()
	return nil
}

// prefetchLocked starts a background fetch of the first ReadAhead bytes of
// chunk idx for a sequential reader, when one of Parallel slots is free.
// It returns false when none is. Failures are dropped: the reader fetches
// for itself.
func (d *Device) prefetchLocked(idx int64) bool {
	if idx >= d.nchunks || d.closed || !d.hasObject(idx) {
		return true
	}
	c := d.chunks[idx]
	if c != nil && (c.buf != nil || c.zero || len(c.parts) > 0 || c.win != nil || c.fetching != nil) {
		return true
	}
	select {
	case d.sem <- struct{}{}:
	default:
		return false
	}
	if c == nil {
		c = &chunk{idx: idx}
		d.chunks[idx] = c
	}
	ch, gen := make(chan struct{}), c.gen
	c.fetching = ch
	n := min(d.opts.ReadAhead, d.chunkLen(idx))
	d.wg.Go(func() {
		defer func() { <-d.sem }()
		data, err := d.getWindow(idx, 0, n)
		d.mu.Lock()
		defer d.mu.Unlock()
		if err := d.fetchDoneLocked(c, ch, gen, 0, data, err); err != nil {
			d.log.Debug("chunked: prefetch failed", "chunk", idx, "err", err)
		}
	})
	return true
}

// maxExtents bounds the extents one Extents call returns.
const maxExtents = 1024

// Extents implements blockdev.Extenter: a chunk with an object or pending
// data is data; one without (or pending deletion) is a hole reading zeros.
func (d *Device) Extents(off, n int64) ([]blockdev.Extent, error) {
	if err := blockdev.CheckRange(off, n, d.man.Size); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, blockdev.ErrClosed
	}
	var out []blockdev.Extent
	end := off + n
	for off < end {
		idx := off / d.chunkSize
		ce := min((idx+1)*d.chunkSize, end)
		var flags blockdev.ExtentFlags
		c := d.chunks[idx]
		switch {
		case c != nil && c.busy() && c.zero:
			flags = blockdev.ExtentHole | blockdev.ExtentZero
		case c != nil && c.busy():
			flags = 0
		case !d.hasObject(idx):
			flags = blockdev.ExtentHole | blockdev.ExtentZero
		}
		if k := len(out); k > 0 && out[k-1].Flags == flags {
			out[k-1].Len += ce - off
		} else {
			if k == maxExtents {
				break
			}
			out = append(out, blockdev.Extent{Off: off, Len: ce - off, Flags: flags})
		}
		off = ce
	}
	return out, nil
}
