package nbd

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"vdisk/internal/blockdev"
	"vdisk/internal/nbd/wire"
)

// Bounds of single commands.
const (
	// cacheChunk is the buffer CACHE reads through.
	cacheChunk = 256 << 10
	// maxDescriptors bounds the descriptors of one BLOCK_STATUS reply.
	maxDescriptors = 1024
)

// allowedFlags returns the command flags t accepts (any other flag gets
// EINVAL; DF is further limited to connections with structured replies)
// and whether t is a command the server knows.
func allowedFlags(t wire.Cmd) (wire.CmdFlags, bool) {
	switch t {
	case wire.CmdRead:
		return wire.CmdFlagFUA | wire.CmdFlagDF, true
	case wire.CmdWrite, wire.CmdFlush, wire.CmdTrim, wire.CmdCache:
		return wire.CmdFlagFUA, true
	case wire.CmdWriteZeroes:
		return wire.CmdFlagFUA | wire.CmdFlagNoHole | wire.CmdFlagFastZero, true
	case wire.CmdBlockStatus:
		return wire.CmdFlagFUA | wire.CmdFlagReqOne, true
	}
	return 0, false
}

// handle runs one request and sends its reply.
func (c *conn) handle(r *request) {
	allowed, known := allowedFlags(r.Type)
	if !known {
		c.replyError(r, wire.EINVAL, fmt.Sprintf("unknown command %d", r.Type))
		return
	}
	if !c.structured() {
		allowed &^= wire.CmdFlagDF
	}
	if r.Flags&^allowed != 0 {
		c.replyError(r, wire.EINVAL, fmt.Sprintf("flags %#x are not valid for command %d", uint16(r.Flags&^allowed), r.Type))
		return
	}
	x := c.exp
	off, n := int64(r.Offset), int64(r.Length)
	// The device's size now, not at the handshake: a disk the daemon grew
	// under the kernel's nbd client takes requests past its old end.
	size := x.dev.Size()
	inside := r.Offset <= uint64(size) && r.Length <= uint64(size)-r.Offset
	writes := r.Type == wire.CmdWrite || r.Type == wire.CmdTrim || r.Type == wire.CmdWriteZeroes
	switch {
	case writes && x.readOnly:
		c.replyError(r, wire.EPERM, "the export is read-only")
		return
	case writes && !inside:
		c.replyError(r, wire.ENOSPC, fmt.Sprintf("range [%d, +%d) lies beyond the end of the export (%d bytes)", r.Offset, r.Length, size))
		return
	case !inside && r.Type != wire.CmdFlush:
		c.replyError(r, wire.EINVAL, fmt.Sprintf("range [%d, +%d) lies beyond the end of the export (%d bytes)", r.Offset, r.Length, size))
		return
	}
	fua := r.Flags&wire.CmdFlagFUA != 0 && writes
	switch r.Type {
	case wire.CmdRead:
		c.cmdRead(r)
	case wire.CmdWrite:
		var err error
		if n > 0 {
			start := time.Now()
			_, err = x.dev.WriteAt(*r.buf, off)
			c.lat.observe(time.Since(start))
		}
		c.replyResult(r, c.fua(err, fua), "write")
	case wire.CmdFlush:
		c.replyResult(r, x.dev.Flush(), "flush")
	case wire.CmdTrim:
		if !x.trimmer {
			c.replyError(r, wire.EINVAL, "trim is not supported by this export")
			return
		}
		c.replyResult(r, c.fua(blockdev.Trim(x.dev, off, n), fua), "trim")
	case wire.CmdWriteZeroes:
		if r.Flags&wire.CmdFlagFastZero != 0 && !x.zeroWriter {
			c.replyError(r, wire.ENOTSUP, "this export cannot write zeroes faster than writing data")
			return
		}
		mayTrim := r.Flags&wire.CmdFlagNoHole == 0
		c.replyResult(r, c.fua(blockdev.WriteZeroes(x.dev, off, n, mayTrim), fua), "write zeroes")
	case wire.CmdCache:
		c.replyResult(r, c.cache(off, n), "cache")
	case wire.CmdBlockStatus:
		c.cmdBlockStatus(r)
	}
}

// fua flushes after a successful write when the request asked for it.
func (c *conn) fua(err error, fua bool) error {
	if err == nil && fua {
		err = c.exp.dev.Flush()
	}
	return err
}

// cache reads [off, off+n) through a small buffer, so the layers below
// (page cache, image caches) hold it.
func (c *conn) cache(off, n int64) error {
	if n == 0 {
		return nil
	}
	b := getBuf(int(min(n, cacheChunk)))
	defer putBuf(b)
	for n > 0 {
		k := min(n, int64(len(*b)))
		if _, err := c.exp.dev.ReadAt((*b)[:k], off); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}

// cmdBlockStatus answers with a chunk for each negotiated context (or,
// with an extended request's payload, for each context it names):
// base:allocation's hole and zero flags, then qemu:allocation-depth's
// layer depths.
func (c *conn) cmdBlockStatus(r *request) {
	if !c.baseOK && !c.depthOK {
		c.replyError(r, wire.EINVAL, "no metadata context was negotiated (set base:allocation or qemu:allocation-depth)")
		return
	}
	if r.Length == 0 {
		c.replyError(r, wire.EINVAL, "block status of an empty range")
		return
	}
	base, depth := c.baseOK, c.depthOK
	if r.hasIDs {
		base, depth = false, false
		for _, id := range r.ids {
			switch {
			case id == baseAllocationID && c.baseOK && !base:
				base = true
			case id == allocationDepthID && c.depthOK && !depth:
				depth = true
			default:
				c.replyError(r, wire.EINVAL, fmt.Sprintf("block status payload names context id %d, which is unknown or repeated", id))
				return
			}
		}
		if !base && !depth {
			c.replyError(r, wire.EINVAL, "block status payload names no context")
			return
		}
	}
	one := r.Flags&wire.CmdFlagReqOne != 0
	type answer struct {
		id    uint32
		descs []wire.BlockDescriptor
	}
	var answers []answer
	if base {
		descs, err := c.statusDescriptors(r, one, c.baseExtents)
		if err != nil {
			c.replyError(r, errnoOf(err), "block status: "+err.Error())
			return
		}
		answers = append(answers, answer{baseAllocationID, descs})
	}
	if depth {
		descs, err := c.statusDescriptors(r, one, c.depthExtents)
		if err != nil {
			c.replyError(r, errnoOf(err), "block status: "+err.Error())
			return
		}
		answers = append(answers, answer{allocationDepthID, descs})
	}
	r.ext = r.ext[:0]
	for i, a := range answers {
		var flags wire.ReplyFlags
		if i == len(answers)-1 {
			flags = wire.ReplyFlagDone
		}
		r.ext = wire.AppendBlockStatus(r.ext, c.chunk(r, flags), a.id, a.descs)
		if c.ext && c.log.Enabled(context.Background(), slog.LevelDebug) {
			var total uint64
			for _, d := range a.descs {
				total += d.Length
			}
			c.log.Debug("nbd: block status", "context", a.id, "offset", r.Offset, "length", r.Length, "descriptors", len(a.descs), "described", total)
		}
	}
	c.send(r.ext)
}

// statusExtent is one range of a context: its length and the descriptor's
// value (flags or depth).
type statusExtent struct {
	off, len int64
	value    uint32
}

// baseExtents reports base:allocation's flags from pos on.
func (c *conn) baseExtents(pos, n int64) ([]statusExtent, error) {
	exts, err := blockdev.Extents(c.exp.dev, pos, n)
	if err != nil {
		return nil, err
	}
	out := make([]statusExtent, len(exts))
	for i, e := range exts {
		var f uint32
		if e.Flags&blockdev.ExtentHole != 0 {
			f |= wire.StateHole
		}
		if e.Flags&blockdev.ExtentZero != 0 {
			f |= wire.StateZero
		}
		out[i] = statusExtent{e.Off, e.Len, f}
	}
	return out, nil
}

// depthExtents reports qemu:allocation-depth's depths from pos on.
func (c *conn) depthExtents(pos, n int64) ([]statusExtent, error) {
	ds, err := blockdev.Depths(c.exp.dev, pos, n)
	if err != nil {
		return nil, err
	}
	out := make([]statusExtent, len(ds))
	for i, d := range ds {
		out[i] = statusExtent{d.Off, d.Len, d.Depth}
	}
	return out, nil
}

// statusDescriptors gathers the descriptors of one context over r's range
// (one with REQ_ONE, at most maxDescriptors), merging neighbours of equal
// value; an error after the first descriptors ends the list early (the
// client asks again from there).
func (c *conn) statusDescriptors(r *request, one bool, extents func(pos, n int64) ([]statusExtent, error)) ([]wire.BlockDescriptor, error) {
	var descs []wire.BlockDescriptor
	pos, end := int64(r.Offset), int64(r.Offset)+int64(r.Length)
scan:
	for pos < end && len(descs) < maxDescriptors {
		exts, err := extents(pos, end-pos)
		if err != nil {
			if len(descs) > 0 {
				break
			}
			return nil, err
		}
		progress := false
		for _, e := range exts {
			if e.off != pos || e.len <= 0 {
				break
			}
			l := min(e.len, end-pos)
			if k := len(descs) - 1; k >= 0 && descs[k].Flags == uint64(e.value) {
				// The sum stays within the request's length: 32 bits
				// unless extended headers were negotiated.
				descs[k].Length += uint64(l)
			} else {
				if (one && len(descs) == 1) || len(descs) == maxDescriptors {
					break scan
				}
				descs = append(descs, wire.BlockDescriptor{Length: uint64(l), Flags: uint64(e.value)})
			}
			pos += l
			progress = true
		}
		if !progress {
			break
		}
	}
	if len(descs) == 0 {
		return nil, fmt.Errorf("the device reported no extents: %w", blockdev.ErrCorrupt)
	}
	return descs, nil
}
