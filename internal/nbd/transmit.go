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
	hdr      [wire.OffsetHoleSize]byte // one reply header
	ext      []byte                    // multi-chunk headers, block status, error chunks
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
	var hb [wire.RequestSize]byte
	for {
		c.mayBlock(wire.RequestSize)
		req, err := wire.ReadRequest(c.br, &hb)
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

// dispatch reads what belongs to req (a WRITE's payload), then runs it
// inline or starts a worker for it. Oversized requests are answered here.
func (c *conn) dispatch(req wire.Request) error {
	r := reqPool.Get().(*request)
	r.c, r.Request = c, req
	maxPayload := int64(c.srv.maxPayload)
	switch req.Type {
	case wire.CmdWrite:
		if int64(req.Length) > maxPayload {
			if err := discard(c.br, int64(req.Length)); err != nil {
				r.finish()
				return fmt.Errorf("nbd: skip oversized write payload: %w", err)
			}
			c.replyError(r, wire.EINVAL, fmt.Sprintf("write of %d bytes exceeds the maximum payload of %d", req.Length, maxPayload))
			r.finish()
			return nil
		}
		r.size = int64(req.Length)
	case wire.CmdRead:
		if int64(req.Length) > maxPayload {
			c.replyError(r, wire.EOVERFLOW, fmt.Sprintf("read of %d bytes exceeds the maximum payload of %d", req.Length, maxPayload))
			r.finish()
			return nil
		}
		r.size = int64(req.Length)
	}
	c.budget.acquire(r.size)
	r.acquired = true
	if req.Type == wire.CmdWrite && req.Length > 0 {
		r.buf = getBuf(int(req.Length))
		c.mayBlock(int(req.Length))
		if _, err := io.ReadFull(c.br, *r.buf); err != nil {
			r.finish()
			return fmt.Errorf("nbd: read write payload: %w", err)
		}
	}
	if c.inline(req) {
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
	r.c, r.size, r.acquired = nil, 0, false
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

// replyOK sends a successful reply without data (a simple reply, which the
// protocol allows even after structured replies were negotiated).
func (c *conn) replyOK(r *request) {
	h := (*[wire.SimpleReplySize]byte)(r.hdr[:wire.SimpleReplySize])
	wire.PutSimpleReply(h, 0, r.Cookie)
	c.send(h[:])
}

// replyError sends an error reply: an ERROR chunk with msg when
// structured replies were negotiated, a simple reply otherwise.
func (c *conn) replyError(r *request, e wire.Errno, msg string) {
	if c.sr {
		r.ext = wire.AppendError(r.ext[:0], wire.ReplyFlagDone, r.Cookie, e, msg)
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
