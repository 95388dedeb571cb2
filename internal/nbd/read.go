package nbd

import (
	"time"

	"vdisk/internal/blockdev"
	"vdisk/internal/nbd/wire"
)

// holeGranule is the granularity at which a structured READ reply looks
// for all-zero runs to send as OFFSET_HOLE chunks instead of data. Reads
// shorter than it always go out as one data chunk.
const holeGranule = 64 << 10

// span is a run of a read buffer: data or all zeroes.
type span struct {
	start, end int
	zero       bool
}

// cmdRead reads the range and sends it: a simple reply with the data, or
// structured chunks (one OFFSET_DATA, or with holes when DF is not set).
// A failed read sends what was read and an ERROR_OFFSET where it failed.
func (c *conn) cmdRead(r *request) {
	if r.Length == 0 {
		if c.structured() {
			n := wire.PutNone(r.hdr[:], c.chunk(r, wire.ReplyFlagDone))
			c.send(r.hdr[:n])
		} else {
			c.replyOK(r)
		}
		return
	}
	r.buf = getBuf(int(r.Length))
	data := *r.buf
	start := time.Now()
	n, err := c.exp.dev.ReadAt(data, int64(r.Offset))
	c.lat.observe(time.Since(start))
	if err != nil {
		c.readFailed(r, n, err)
		return
	}
	if !c.structured() {
		h := (*[wire.SimpleReplySize]byte)(r.hdr[:wire.SimpleReplySize])
		wire.PutSimpleReply(h, 0, r.Cookie)
		c.send(h[:], data)
		return
	}
	if r.Flags&wire.CmdFlagDF != 0 || len(data) < holeGranule || !c.sparse(r, data) {
		n := wire.PutOffsetDataHeader(r.hdr[:], c.chunk(r, wire.ReplyFlagDone), r.Offset, uint32(r.Length))
		c.send(r.hdr[:n], data)
	}
}

// readFailed answers a READ whose first n bytes were read before err.
func (c *conn) readFailed(r *request, n int, err error) {
	e, msg := errnoOf(err), "read: "+err.Error()
	if !c.structured() {
		c.replyError(r, e, msg)
		return
	}
	n = max(0, min(n, int(r.Length)-1)) // the error offset lies inside the request
	var parts [][]byte
	if n > 0 {
		k := wire.PutOffsetDataHeader(r.hdr[:], c.chunk(r, 0), r.Offset, uint32(n))
		parts = append(parts, r.hdr[:k], (*r.buf)[:n])
	}
	r.ext = wire.AppendErrorOffset(r.ext[:0], c.chunk(r, wire.ReplyFlagDone), e, msg, r.Offset+uint64(n))
	c.send(append(parts, r.ext)...)
}

// sparse sends data as OFFSET_DATA and OFFSET_HOLE chunks when it holds
// an all-zero granule; it returns false, having sent nothing, when data
// has none.
func (c *conn) sparse(r *request, data []byte) bool {
	spans := r.spans[:0]
	for i := 0; i < len(data); i += holeGranule {
		j := min(i+holeGranule, len(data))
		z := blockdev.IsZero(data[i:j])
		if k := len(spans) - 1; k >= 0 && spans[k].zero == z {
			spans[k].end = j
		} else {
			spans = append(spans, span{start: i, end: j, zero: z})
		}
	}
	r.spans = spans
	if len(spans) == 1 && !spans[0].zero {
		return false
	}
	hs := c.chunk(r, 0).Size()
	need := 0
	for _, s := range spans {
		if s.zero {
			need += hs + 12
		} else {
			need += hs + 8
		}
	}
	if cap(r.ext) < need {
		r.ext = make([]byte, need)
	}
	hdrs := r.ext[:need]
	parts := r.parts[:0]
	for i, s := range spans {
		var flags wire.ReplyFlags
		if i == len(spans)-1 {
			flags = wire.ReplyFlagDone
		}
		off := r.Offset + uint64(s.start)
		if s.zero {
			k := wire.PutOffsetHole(hdrs, c.chunk(r, flags), off, uint32(s.end-s.start))
			parts = append(parts, hdrs[:k])
			hdrs = hdrs[k:]
		} else {
			k := wire.PutOffsetDataHeader(hdrs, c.chunk(r, flags), off, uint32(s.end-s.start))
			parts = append(parts, hdrs[:k], data[s.start:s.end])
			hdrs = hdrs[k:]
		}
	}
	r.parts = parts
	c.send(parts...)
	return true
}
