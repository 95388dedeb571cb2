package chunked

import (
	"container/list"
	"slices"
	"time"
)

// chunk is the cached state of one chunk. All fields are guarded by the
// Device's mu.
//
// Its content is, in order of precedence: all zeros when zero; buf when
// loaded; buf inside written and the stored object (or zeros) elsewhere;
// the stored object (or zeros) otherwise. win caches a range of the stored
// object for a chunk with neither buf nor zero.
type chunk struct {
	idx     int64
	buf     []byte
	zero    bool
	loaded  bool
	written spans
	// fresh is what was written since the last upload snapshot: a chunk
	// written over in full is uploaded at once, whatever the order of the
	// writes.
	fresh spans
	// upBuf is the buffer an upload is sending. While buf is upBuf,
	// a write copies buf first (copy on write, so an upload needs no
	// snapshot).
	upBuf  []byte
	win    []byte
	winOff int64

	// dirty: modified since the last upload snapshot. gen counts
	// modifications; storedGen is the gen the store holds.
	dirty     bool
	gen       uint64
	storedGen uint64
	uploading bool
	queued    bool
	since     time.Time // when it became dirty
	failSeq   uint64    // the Device's failSeq at this chunk's last failed upload
	lastErr   error

	// fetching is non-nil while a GET for this chunk runs; closed when done.
	fetching chan struct{}
	elem     *list.Element // in the clean LRU
}

// cost is what the chunk's memory counts against dirtyBytes or cleanBytes.
func (c *chunk) cost() int64 {
	n := int64(len(c.buf) + len(c.win))
	if c.zero {
		n += zeroEntryCost
	}
	return n
}

func (c *chunk) busy() bool { return c.dirty || c.uploading }

// ownBuf makes buf safe to modify: a copy of it when an upload is sending
// it.
func (c *chunk) ownBuf() {
	if len(c.buf) > 0 && len(c.upBuf) > 0 && &c.buf[0] == &c.upBuf[0] {
		c.buf = slices.Clone(c.buf)
	}
}

// spans is a sorted list of disjoint, non-adjacent [start, end) ranges.
type spans []span

type span struct{ start, end int64 }

// add merges [start, end) into s.
func (s spans) add(start, end int64) spans {
	i := 0
	for i < len(s) && s[i].end < start {
		i++
	}
	j := i
	for j < len(s) && s[j].start <= end {
		start = min(start, s[j].start)
		end = max(end, s[j].end)
		j++
	}
	return slices.Replace(s, i, j, span{start, end})
}

// covers reports whether [start, end) lies inside one span.
func (s spans) covers(start, end int64) bool {
	for _, sp := range s {
		if sp.start <= start && end <= sp.end {
			return true
		}
	}
	return start >= end
}

// gaps calls fn for each range of [0, n) outside s.
func (s spans) gaps(n int64, fn func(start, end int64)) {
	at := int64(0)
	for _, sp := range s {
		if sp.start > at {
			fn(at, min(sp.start, n))
		}
		at = max(at, sp.end)
	}
	if at < n {
		fn(at, n)
	}
}
