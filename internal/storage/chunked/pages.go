package chunked

// The page cache serves reads that are not sequential (no read-ahead):
// clean pages of pageSize bytes of the stored chunk objects, in memory,
// counted with the other clean data against CacheSize and evicted with it,
// least recently used first. A missing run of pages is fetched by one
// ranged GET of just those pages, and each page has at most one fetch in
// flight, so random readers of one chunk fetch in parallel instead of one
// after the other.
//
// A page holds the chunk's stored object, so it is used only while the
// chunk has nothing newer in memory (no buf, parts or zero, not dirty or
// uploading) and dropped whenever that changes: on every write to the
// chunk, every upload's end and every refresh of a reader's view. A fetch
// that overlapped such a change (inval moved on) is returned to its reader
// but not kept.

import (
	"container/list"

	"vdisk/internal/blockdev"
)

// maxPageSize is the page size of chunks at least that large; a smaller
// chunk is one page. A read fetches the pages it touches and no more, so
// this is the least a random read costs; 4 KiB is what a file system or
// a guest reads at least.
const maxPageSize = 4 << 10

type pageKey struct {
	idx int64 // chunk
	pg  int64 // page within the chunk
}

// page is a cached page; data is the page's bytes (shorter at the end of
// a short last chunk).
type page struct {
	key  pageKey
	data []byte
	elem *list.Element // in the Device's LRU
}

// pageState is the page cache of a Device, guarded by its mu.
type pageState struct {
	pages map[pageKey]*page
	// byChunk counts the cached pages of each chunk (for invalidation).
	byChunk map[int64]int
	// inflight holds a channel per page being fetched, closed when done.
	inflight map[pageKey]chan struct{}
	// fetches counts the fetches in flight per chunk, and inval the
	// invalidations of a chunk's pages while it has some.
	fetches map[int64]int
	inval   map[int64]uint64
}

func (d *Device) pageSize() int64 { return min(d.chunkSize, maxPageSize) }

// usePagesLocked reports whether a read of chunk idx may be served from
// pages: its newest content is the stored object.
func (d *Device) usePagesLocked(idx int64) bool {
	c := d.chunks[idx]
	return c == nil || (!c.busy() && c.buf == nil && !c.zero && len(c.parts) == 0)
}

// invalidatePagesLocked drops chunk idx's pages: its stored object
// changed or is about to.
func (d *Device) invalidatePagesLocked(idx int64) {
	ps := &d.pg
	if ps.inval == nil {
		return
	}
	if ps.fetches[idx] > 0 {
		ps.inval[idx]++
	}
	if ps.byChunk[idx] == 0 {
		return
	}
	n := (d.chunkLen(idx) + d.pageSize() - 1) / d.pageSize()
	for pg := range n {
		if p := ps.pages[pageKey{idx, pg}]; p != nil {
			d.dropPageLocked(p)
		}
	}
}

func (d *Device) dropPageLocked(p *page) {
	ps := &d.pg
	d.lru.Remove(p.elem)
	delete(ps.pages, p.key)
	if ps.byChunk[p.key.idx]--; ps.byChunk[p.key.idx] == 0 {
		delete(ps.byChunk, p.key.idx)
	}
	d.cleanBytes -= int64(cap(p.data))
}

// readPagesLocked fills p from chunk idx at co through the page cache. It
// returns false, having done nothing, when the chunk's content is not the
// stored object (the caller reads it the other way). It unlocks mu around
// waits and GETs.
func (d *Device) readPagesLocked(idx, co int64, p []byte) (bool, error) {
	ps := &d.pg
	if ps.pages == nil {
		ps.pages = make(map[pageKey]*page)
		ps.byChunk = make(map[int64]int)
		ps.inflight = make(map[pageKey]chan struct{})
		ps.fetches = make(map[int64]int)
		ps.inval = make(map[int64]uint64)
	}
	size := d.pageSize()
	end := co + int64(len(p))
	first, last := co/size, (end-1)/size
	for {
		if !d.usePagesLocked(idx) {
			return false, nil
		}
		// Whether a page is missing, and whether one is being fetched.
		missing := false
		var wait chan struct{}
		for pg := first; pg <= last; pg++ {
			if ps.pages[pageKey{idx, pg}] != nil {
				continue
			}
			if ch := ps.inflight[pageKey{idx, pg}]; ch != nil {
				wait = ch
				break
			}
			missing = true
		}
		if wait != nil {
			d.mu.Unlock()
			<-wait
			d.mu.Lock()
			if d.closed {
				return true, blockdev.ErrClosed
			}
			continue
		}
		if !missing {
			for pg := first; pg <= last; pg++ {
				pp := ps.pages[pageKey{idx, pg}]
				s := max(co, pg*size)
				e := min(end, pg*size+int64(len(pp.data)))
				copy(p[s-co:e-co], pp.data[s-pg*size:e-pg*size])
				d.lru.MoveToFront(pp.elem)
			}
			return true, nil
		}
		// Fetch the read's pages in one GET (some may be cached: a small
		// waste for one request instead of several) and serve the read
		// from what came.
		ch := make(chan struct{})
		for pg := first; pg <= last; pg++ {
			if ps.pages[pageKey{idx, pg}] == nil {
				ps.inflight[pageKey{idx, pg}] = ch
			}
		}
		gen := ps.inval[idx]
		ps.fetches[idx]++
		start := first * size
		n := min((last+1)*size, d.chunkLen(idx)) - start
		var data []byte
		var err error
		if d.hasObject(idx) {
			d.mu.Unlock()
			data, err = d.getChunk(idx, start, n)
			d.mu.Lock()
		} else {
			data = make([]byte, n)
		}
		for pg := first; pg <= last; pg++ {
			if ps.inflight[pageKey{idx, pg}] == ch {
				delete(ps.inflight, pageKey{idx, pg})
			}
		}
		close(ch)
		valid := ps.inval[idx] == gen
		if ps.fetches[idx]--; ps.fetches[idx] == 0 {
			delete(ps.fetches, idx)
			delete(ps.inval, idx)
		}
		if err != nil {
			return true, err
		}
		copy(p, data[co-start:])
		if valid && d.usePagesLocked(idx) {
			for pg := first; pg <= last; pg++ {
				k := pageKey{idx, pg}
				if ps.pages[k] != nil {
					continue
				}
				s := pg*size - start
				e := min(s+size, int64(len(data)))
				pp := &page{key: k, data: data[s:e:e]}
				pp.elem = d.lru.PushFront(pp)
				ps.pages[k] = pp
				ps.byChunk[idx]++
				d.cleanBytes += int64(cap(pp.data))
			}
			d.evictLocked()
		}
		return true, nil
	}
}
