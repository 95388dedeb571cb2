package nbd

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// Reply coalescing bounds.
const (
	// replyBufSize is the buffer in which small replies wait for the
	// last of a burst of concurrent senders to write them out together.
	replyBufSize = 64 << 10
	// coalesceMax is the largest reply that is copied into that buffer;
	// larger ones are written with writev straight from their buffers.
	coalesceMax = 16 << 10
)

// replyWriter serialises the replies of one connection. send may be called
// from many goroutines; each call writes its parts as one contiguous
// message. Small messages are coalesced: a sender that knows another is
// already waiting for the mutex leaves its message in buf for that one to
// write, so a burst of completions costs one write system call. The last
// sender of a burst always writes. The request reader also holds the
// buffer (hold/release) while it works through requests it has already
// received, so replies to a batch of requests go out together when it is
// about to wait for the network again.
type replyWriter struct {
	waiting atomic.Int32 // senders between announcing themselves and finishing

	mu   sync.Mutex
	w    io.Writer
	buf  []byte
	bufs net.Buffers
	vec  [8][]byte
	err  error
}

func (rw *replyWriter) init(w io.Writer) {
	rw.w = w
	rw.buf = make([]byte, 0, replyBufSize)
}

// send writes parts as one message. It returns the first write error of
// the connection; after one, every send fails.
func (rw *replyWriter) send(parts ...[]byte) error {
	rw.waiting.Add(1)
	rw.mu.Lock()
	defer rw.mu.Unlock()
	if rw.err != nil {
		rw.waiting.Add(-1)
		return rw.err
	}
	total := 0
	for _, p := range parts {
		total += len(p)
	}
	if total <= coalesceMax && len(rw.buf)+total <= cap(rw.buf) {
		for _, p := range parts {
			rw.buf = append(rw.buf, p...)
		}
	} else {
		rw.bufs = append(rw.vec[:0], rw.buf)
		rw.bufs = append(rw.bufs, parts...)
		_, rw.err = rw.bufs.WriteTo(rw.w)
		rw.buf = rw.buf[:0]
	}
	rw.flushIfLast()
	return rw.err
}

// flushIfLast writes buf out unless another sender or a hold will.
// rw.mu is held.
func (rw *replyWriter) flushIfLast() {
	if rw.waiting.Add(-1) == 0 && len(rw.buf) > 0 && rw.err == nil {
		_, rw.err = rw.w.Write(rw.buf)
		rw.buf = rw.buf[:0]
	}
}

// hold keeps small replies in the buffer until release.
func (rw *replyWriter) hold() { rw.waiting.Add(1) }

// release ends a hold, writing out what waited for it.
func (rw *replyWriter) release() error {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	rw.flushIfLast()
	return rw.err
}
