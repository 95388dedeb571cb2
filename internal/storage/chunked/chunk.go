package chunked

import (
	"container/list"
	"slices"
	"time"
)

// chunk is the cached state of one chunk. All fields are guarded by the
// Device's mu.
//
// Its content is, in order of precedence: all zeros when zero; buf (the
// whole chunk) when buf is set; parts over the stored object (or over
// zeros when zeroBase) when there are parts; the stored object (or zeros)
// otherwise. win caches a range of
// the stored object for a chunk with neither buf, parts nor zero.
//
// Writes into a chunk without a buf become parts, so they cost memory for
// what they wrote, not for the whole chunk: the object is read (and the
// parts laid over it into buf) only when the chunk is uploaded, and not at
// all when it is written over in full or has no object.
type chunk struct {
	idx   int64
	buf   []byte
	zero  bool
	parts parts
	// zeroBase: the parts lie over zeros, not over the stored object.
	// baseSeq counts the times parts were started (a GET begun under
	// other parts must not be laid under these).
	zeroBase bool
	baseSeq  uint64
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
	n := int64(len(c.buf)+len(c.win)) + c.parts.cost()
	if c.zero {
		n += zeroEntryCost
	}
	return n
}

func (c *chunk) busy() bool { return c.dirty || c.uploading }

// ownBuf makes buf safe to modify: a copy of it (into memory from alloc)
// when an upload is sending it.
func (c *chunk) ownBuf(alloc func(n, capacity int64) []byte) {
	if len(c.buf) > 0 && len(c.upBuf) > 0 && &c.buf[0] == &c.upBuf[0] {
		b := alloc(int64(len(c.buf)), int64(len(c.buf)))
		copy(b, c.buf)
		c.buf = b
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

// part is data written at off of a chunk.
type part struct {
	off  int64
	data []byte
}

func (p *part) end() int64 { return p.off + int64(len(p.data)) }

// parts is a sorted list of disjoint, non-adjacent parts.
type parts []part

// cost is the memory the parts hold.
func (ps parts) cost() int64 {
	var n int64
	for _, p := range ps {
		n += int64(cap(p.data))
	}
	return n
}

// covering returns the part holding all of [start, end), or nil.
func (ps parts) covering(start, end int64) *part {
	for i := range ps {
		if ps[i].off <= start && end <= ps[i].end() {
			return &ps[i]
		}
	}
	return nil
}

// overlay copies the parts over buf, a whole chunk.
func (ps parts) overlay(buf []byte) {
	for _, p := range ps {
		copy(buf[p.off:], p.data)
	}
}

// plan says what write(off, b) with end = off+len(b) does: parts [i, j)
// are replaced by one of n bytes at start, with this capacity. A part gets
// room up to limit, the chunk's length, when it is large (a sequential
// writer's) and doubles when it grows otherwise, so runs of sequential
// writes cost no quadratic copying.
func (ps parts) plan(off, end, limit int64) (i, j int, start, n, capacity int64) {
	room := func(start, n int64) int64 {
		if n >= limit/8 {
			return limit - start
		}
		return n
	}
	for i < len(ps) && ps[i].end() < off {
		i++
	}
	j = i
	for j < len(ps) && ps[j].off <= end {
		j++
	}
	if i == j {
		return i, j, off, end - off, room(off, end-off)
	}
	start = min(off, ps[i].off)
	n = max(end, ps[j-1].end()) - start
	first := int64(cap(ps[i].data))
	switch {
	case ps[i].off == start && first >= n:
		capacity = first
	case ps[i].off == start:
		capacity = min(max(n, 2*first, room(start, n)), limit-start)
	default:
		capacity = room(start, n)
	}
	return i, j, start, n, capacity
}

// growth is the memory write(off, b) adds to ps, with end = off+len(b).
func (ps parts) growth(off, end, limit int64) int64 {
	i, j, _, _, capacity := ps.plan(off, end, limit)
	for _, p := range ps[i:j] {
		capacity -= int64(cap(p.data))
	}
	return max(capacity, 0)
}

// write merges b written at off into ps, with the parts it overlaps or
// touches (see plan). A new part's memory comes from alloc (nil: make),
// which may return memory that is not cleared: every byte of a part is
// written before it is read.
func (ps parts) write(off int64, b []byte, limit int64, alloc func(n, capacity int64) []byte) parts {
	if alloc == nil {
		alloc = func(n, capacity int64) []byte { return make([]byte, n, capacity) }
	}
	end := off + int64(len(b))
	i, j, start, n, capacity := ps.plan(off, end, limit)
	var data []byte
	switch {
	case i == j:
		data = alloc(n, capacity)
	case ps[i].off == start && int64(cap(ps[i].data)) >= n:
		data = ps[i].data[:n]
	default:
		data = alloc(n, capacity)
		copy(data[ps[i].off-start:], ps[i].data)
	}
	if i < j {
		for _, p := range ps[i+1 : j] {
			copy(data[p.off-start:], p.data)
		}
	}
	copy(data[off-start:], b)
	return slices.Replace(ps, i, j, part{start, data})
}
