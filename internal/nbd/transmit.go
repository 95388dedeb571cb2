package nbd

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"

	"vdisk/internal/blockdev"
	"vdisk/internal/nbd/wire"
)

// request is one request in flight. Requests are pooled; the worker that
// runs one owns it until finish.
type request struct {
	c *conn
	wire.Request
	buf      *[]byte // WRITE payload or READ data, from the buffer pool
	size     int64   // bytes taken from the connection's budget
	acquired bool
	global   bool     // size is also taken from the server's budget
	ids      []uint32 // BLOCK_STATUS payload: the contexts to answer for
	hasIDs   bool
	hdr      [wire.MaxOffsetHoleSize]byte // one reply header
	ext      []byte                       // multi-chunk headers, block status, error chunks
	parts    [][]byte
	spans    []span
}

var reqPool = sync.Pool{New: func() any { return new(request) }}

// transmit runs the transmission phase: a loop reading requests that runs
// each itself (see inline) or hands it to a worker goroutine, then waits
// for every worker.
func (c *conn) transmit() error {
	c.rw.init(c.nc)
	c.budget.init(c.srv.maxInFlight, max(maxInFlightBytes, int64(c.srv.maxPayload)))
	err := c.readRequests()
	c.workers.Wait()
	return err
}

func (c *conn) readRequests() error {
	defer c.unhold()
	var hb [wire.ExtRequestSize]byte
	hsize := wire.RequestSize
	if c.ext {
		hsize = wire.ExtRequestSize
	}
	for {
		c.mayBlock(hsize)
		var req wire.Request
		var err error
		if c.ext {
			req, err = wire.ReadExtRequest(c.br, &hb)
		} else {
			req, err = wire.ReadRequest(c.br, (*[wire.RequestSize]byte)(hb[:wire.RequestSize]))
		}
		if err != nil {
			switch {
			case c.isClosing():
				return nil
			case err == io.EOF:
				return nil // the client hung up between requests
			case errors.Is(err, wire.ErrBadMagic):
				return fmt.Errorf("%w: %v", errProtocol, err)
			}
			return fmt.Errorf("nbd: read request: %w", err)
		}
		if req.Type == wire.CmdDisc {
			return nil
		}
		if !c.held {
			c.rw.hold()
			c.held = true
		}
		if err := c.dispatch(req); err != nil {
			if c.isClosing() {
				return nil
			}
			return err
		}
	}
}

// dispatch reads what belongs to req (a payload), then runs it inline or
// starts a worker for it. Oversized and malformed requests are answered
// here.
func (c *conn) dispatch(req wire.Request) error {
	r := reqPool.Get().(*request)
	r.c, r.Request = c, req
	maxPayload := uint64(c.srv.maxPayload)
	payload := req.Type == wire.CmdWrite
	if c.ext {
		// A WRITE always carries its data. The spec says its request
		// MUST set NBD_CMD_FLAG_PAYLOAD_LEN, but qemu 9 and 10 do not
		// (their server does not require it either), so the flag is
		// optional for WRITE and means a payload for every other command.
		payload = payload || req.Flags&wire.CmdFlagPayloadLen != 0
		r.Flags &^= wire.CmdFlagPayloadLen
		switch {
		case payload && req.Length > maxPayload:
			r.finish()
			return fmt.Errorf("%w: payload of %d bytes exceeds the maximum of %d", errProtocol, req.Length, maxPayload)
		case payload && req.Type == wire.CmdBlockStatus:
			return c.blockStatusPayload(r)
		case payload && req.Type != wire.CmdWrite:
			if err := discard(c.br, int64(req.Length)); err != nil {
				r.finish()
				return fmt.Errorf("nbd: skip payload: %w", err)
			}
			c.replyError(r, wire.EINVAL, fmt.Sprintf("command %d takes no payload", req.Type))
			r.finish()
			return nil
		}
	}
	switch {
	case payload:
		if req.Length > maxPayload {
			if err := discard(c.br, int64(req.Length)); err != nil {
				r.finish()
				return fmt.Errorf("nbd: skip oversized write payload: %w", err)
			}
			c.replyError(r, wire.EINVAL, fmt.Sprintf("write of %d bytes exceeds the maximum payload of %d", req.Length, maxPayload))
			r.finish()
			return nil
		}
		r.size = int64(req.Length)
	case req.Type == wire.CmdRead:
		if req.Length > maxPayload {
			c.replyError(r, wire.EOVERFLOW, fmt.Sprintf("read of %d bytes exceeds the maximum payload of %d", req.Length, maxPayload))
			r.finish()
			return nil
		}
		r.size = int64(req.Length)
	}
	c.acquire(r)
	if payload && req.Length > 0 {
		r.buf = getBuf(int(req.Length))
		c.mayBlock(int(req.Length))
		if _, err := io.ReadFull(c.br, *r.buf); err != nil {
			r.finish()
			return fmt.Errorf("nbd: read write payload: %w", err)
		}
	}
	return c.start(r)
}

// acquire takes r's room in the connection's budget and, for a payload,
// in the server's.
func (c *conn) acquire(r *request) {
	c.budget.acquire(r.size)
	r.acquired = true
	if r.size > 0 {
		c.srv.buffered.acquire(r.size)
		r.global = true
	}
}

// start runs r inline or on a worker.
func (c *conn) start(r *request) error {
	if c.inline(r.Request) {
		r.run()
		return nil
	}
	c.workers.Add(1)
	go func() {
		defer c.workers.Done()
		r.run()
	}()
	return nil
}

// blockStatusPayload reads the payload of an extended BLOCK_STATUS: the
// effect length and the context ids to answer for (validated by the
// command). A payload of the wrong shape is consumed and refused.
func (c *conn) blockStatusPayload(r *request) error {
	if r.Length > 8+4*wire.MaxQueries || c.flags&wire.FlagBlockStatusPayload == 0 {
		if err := discard(c.br, int64(r.Length)); err != nil {
			r.finish()
			return fmt.Errorf("nbd: skip block status payload: %w", err)
		}
		c.replyError(r, wire.EINVAL, "block status payload not accepted: too long, or no metadata context was negotiated")
		r.finish()
		return nil
	}
	p := make([]byte, r.Length)
	c.mayBlock(len(p))
	if _, err := io.ReadFull(c.br, p); err != nil {
		r.finish()
		return fmt.Errorf("nbd: read block status payload: %w", err)
	}
	effect, ids, err := wire.DecodeBlockStatusPayload(p)
	if err != nil {
		c.replyError(r, wire.EINVAL, err.Error())
		r.finish()
		return nil
	}
	r.Length, r.ids, r.hasIDs = effect, ids, true
	c.acquire(r)
	return c.start(r)
}

// run executes the request, sends its reply and releases it.
func (r *request) run() {
	r.c.handle(r)
	r.finish()
}

// mayBlock releases the hold on replies before a read of n bytes that may
// wait for the network: the client may be waiting for those replies.
func (c *conn) mayBlock(n int) {
	if c.held && c.br.Buffered() < n {
		c.unhold()
	}
}

func (c *conn) unhold() {
	if c.held {
		c.held = false
		if err := c.rw.release(); err != nil {
			c.abort()
		}
	}
}

// finish returns the request's buffers and budget.
func (r *request) finish() {
	if r.buf != nil {
		putBuf(r.buf)
		r.buf = nil
	}
	if r.acquired {
		r.c.budget.release(r.size)
	}
	if r.global {
		r.c.srv.buffered.release(r.size)
	}
	r.c, r.size, r.acquired, r.global = nil, 0, false, false
	r.ids, r.hasIDs = nil, false
	clear(r.parts)
	r.parts = r.parts[:0]
	reqPool.Put(r)
}

// send writes one reply; a failed write closes the connection.
func (c *conn) send(parts ...[]byte) {
	if err := c.rw.send(parts...); err != nil {
		c.abort()
	}
}

// chunk is the header template of r's reply chunks.
func (c *conn) chunk(r *request, flags wire.ReplyFlags) wire.ChunkHeader {
	return wire.ChunkHeader{Extended: c.ext, Flags: flags, Cookie: r.Cookie, Offset: r.Offset}
}

// replyOK sends a successful reply without data: a simple reply, which the
// protocol allows even after structured replies were negotiated, or with
// extended headers a NONE chunk.
func (c *conn) replyOK(r *request) {
	if c.ext {
		n := wire.PutNone(r.hdr[:], c.chunk(r, wire.ReplyFlagDone))
		c.send(r.hdr[:n])
		return
	}
	h := (*[wire.SimpleReplySize]byte)(r.hdr[:wire.SimpleReplySize])
	wire.PutSimpleReply(h, 0, r.Cookie)
	c.send(h[:])
}

// replyError sends an error reply: an ERROR chunk with msg when
// structured replies were negotiated, a simple reply otherwise.
func (c *conn) replyError(r *request, e wire.Errno, msg string) {
	if c.structured() {
		r.ext = wire.AppendError(r.ext[:0], c.chunk(r, wire.ReplyFlagDone), e, msg)
		c.send(r.ext)
		return
	}
	h := (*[wire.SimpleReplySize]byte)(r.hdr[:wire.SimpleReplySize])
	wire.PutSimpleReply(h, e, r.Cookie)
	c.send(h[:])
}

// replyResult answers with success or with err mapped to an errno.
func (c *conn) replyResult(r *request, err error, what string) {
	if err == nil {
		c.replyOK(r)
		return
	}
	c.replyError(r, errnoOf(err), what+": "+err.Error())
}

// errnoOf maps a Device error to one of the errors the protocol defines.
func errnoOf(err error) wire.Errno {
	switch e := blockdev.Errno(err); e {
	case syscall.EPERM, syscall.EIO, syscall.ENOMEM, syscall.EINVAL, syscall.ENOSPC, syscall.EOVERFLOW, syscall.ESHUTDOWN:
		return wire.Errno(e)
	case syscall.EOPNOTSUPP:
		return wire.ENOTSUP
	case syscall.EDQUOT, syscall.EFBIG:
		return wire.ENOSPC
	case syscall.EROFS, syscall.EACCES:
		return wire.EPERM
	}
	return wire.EIO
}
