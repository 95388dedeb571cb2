//go:build linux

package blockdev

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"vdisk/internal/uring"
)

// --aio=io_uring: a File's reads, writes and flushes go through one
// io_uring. Callers queue their requests and block; a submitter goroutine,
// on its own locked thread, takes every queued request at once, fills
// their SQEs and submits them with one io_uring_enter, which also waits
// for completions; each completion wakes its caller. While it waits with
// nothing queued, an eventfd polled through the ring lets a new request
// wake it.

// ringEntries is the size of a File's ring, and so the most requests it
// has in flight; more wait in the queue.
const ringEntries = 128

// pollTag is the user data of the eventfd poll; requests use their slot.
const pollTag = ^uint64(0)

// maxRingIO bounds one read or write SQE.
const maxRingIO = 1 << 30

// ringReq is one request waiting for its completion.
type ringReq struct {
	op    uint8
	buf   []byte
	off   int64
	flags uint32
	res   int32
	done  chan struct{}
}

var ringReqPool = sync.Pool{New: func() any { return &ringReq{done: make(chan struct{}, 1)} }}

// fileRing is a File's io_uring and its submitter.
type fileRing struct {
	r   *uring.Ring
	fd  int
	efd int

	mu       sync.Mutex
	queue    []*ringReq
	sleeping bool // the submitter waits and must be woken through efd
	closing  bool
	stopped  chan struct{}
	err      error // why the submitter stopped early
}

// newFileRing starts the io_uring of fd. io_uring missing (ENOSYS) or
// forbidden (EPERM: seccomp, the io_uring_disabled sysctl) is an error
// saying so: --aio=io_uring asks for it, and a silent fallback to threads
// would hide that the mode in use is not the one asked for.
func newFileRing(fd int) (*fileRing, error) {
	r, err := uring.New(ringEntries, 0)
	switch {
	case errors.Is(err, syscall.ENOSYS):
		return nil, fmt.Errorf("this kernel has no io_uring: %w", err)
	case errors.Is(err, syscall.EPERM):
		return nil, fmt.Errorf("io_uring is forbidden here (a seccomp filter or the kernel.io_uring_disabled sysctl): %w", err)
	case err != nil:
		return nil, err
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	fr := &fileRing{r: r, fd: fd, efd: efd, stopped: make(chan struct{})}
	go fr.run()
	return fr, nil
}

// do queues req, waits for its completion and returns its result: a byte
// count, or a negative errno.
func (fr *fileRing) do(req *ringReq) (int, error) {
	fr.mu.Lock()
	if fr.closing {
		fr.mu.Unlock()
		return 0, ErrClosed
	}
	if fr.err != nil {
		err := fr.err
		fr.mu.Unlock()
		return 0, err
	}
	fr.queue = append(fr.queue, req)
	wake := fr.sleeping
	fr.sleeping = false
	fr.mu.Unlock()
	if wake {
		fr.wake()
	}
	<-req.done
	if req.res < 0 {
		return 0, syscall.Errno(-req.res)
	}
	return int(req.res), nil
}

func (fr *fileRing) wake() {
	one := uint64(1)
	for {
		_, err := unix.Write(fr.efd, (*[8]byte)(unsafe.Pointer(&one))[:])
		if err != unix.EINTR {
			return
		}
	}
}

// rw reads or writes b at off through the ring.
func (fr *fileRing) rw(write bool, dsync bool, b []byte, off int64) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	if len(b) > maxRingIO {
		b = b[:maxRingIO] // an SQE's length is 32 bits; callers loop on short counts
	}
	req := ringReqPool.Get().(*ringReq)
	req.op, req.buf, req.off, req.flags = uring.OpRead, b, off, 0
	if write {
		req.op = uring.OpWrite
		if dsync {
			req.flags = unix.RWF_DSYNC
		}
	}
	n, err := fr.do(req)
	runtime.KeepAlive(b)
	req.buf = nil
	ringReqPool.Put(req)
	return n, err
}

// datasync is fdatasync through the ring.
func (fr *fileRing) datasync() error {
	req := ringReqPool.Get().(*ringReq)
	req.op, req.buf, req.off, req.flags = uring.OpFsync, nil, 0, uring.FsyncDatasync
	_, err := fr.do(req)
	ringReqPool.Put(req)
	return err
}

// close stops the submitter once everything queued has completed, then
// releases the ring.
func (fr *fileRing) close() {
	fr.mu.Lock()
	fr.closing = true
	wake := fr.sleeping
	fr.sleeping = false
	fr.mu.Unlock()
	if wake {
		fr.wake()
	}
	<-fr.stopped
	fr.r.Close()
	unix.Close(fr.efd)
}

// run is the submitter.
func (fr *fileRing) run() {
	defer close(fr.stopped)
	// Completions that need task work get it on the submitting thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	slots := make([]*ringReq, ringEntries)
	free := make([]uint64, 0, ringEntries)
	for i := range ringEntries {
		free = append(free, uint64(ringEntries-1-i))
	}
	inflight := 0
	polling := false
	var batch []*ringReq
	fail := func(err error) {
		fr.mu.Lock()
		fr.err = fmt.Errorf("io_uring: %w", err)
		batch = append(batch, fr.queue...)
		fr.queue = nil
		fr.mu.Unlock()
		for _, q := range batch {
			q.res = -int32(syscall.EIO)
			q.done <- struct{}{}
		}
		for _, q := range slots {
			if q != nil {
				q.res = -int32(syscall.EIO)
				q.done <- struct{}{}
			}
		}
	}
	for {
		fr.mu.Lock()
		take := min(len(fr.queue), len(free))
		batch = append(batch[:0], fr.queue[:take]...)
		fr.queue = append(fr.queue[:0], fr.queue[take:]...)
		if take == 0 && len(fr.queue) == 0 {
			if fr.closing && inflight == 0 {
				fr.mu.Unlock()
				return
			}
			fr.sleeping = !fr.closing
		}
		fr.mu.Unlock()
		for _, q := range batch {
			s, err := fr.r.GetSQE()
			if err != nil { // cannot happen: a slot is free for each
				fail(err)
				return
			}
			tag := free[len(free)-1]
			free = free[:len(free)-1]
			slots[tag] = q
			inflight++
			s.Opcode = q.op
			s.Fd = int32(fr.fd)
			s.Off = uint64(q.off)
			if len(q.buf) > 0 {
				s.Addr = uint64(uintptr(unsafe.Pointer(&q.buf[0])))
				s.Len = uint32(len(q.buf))
			}
			s.OpFlags = q.flags
			s.UserData = tag
		}
		batch = batch[:0]
		wait := uint32(0)
		if take == 0 {
			// Nothing new: wait for a completion, or for the eventfd.
			if !polling {
				s, err := fr.r.GetSQE()
				if err != nil {
					fail(err)
					return
				}
				s.Opcode = uring.OpPollAdd
				s.Fd = int32(fr.efd)
				s.OpFlags = unix.POLLIN
				s.UserData = pollTag
				polling = true
			}
			wait = 1
		}
		if err := fr.r.Submit(wait); err != nil {
			fail(err)
			return
		}
		fr.r.Reap(func(e uring.CQE) {
			if e.UserData == pollTag {
				polling = false
				var v [8]byte
				unix.Read(fr.efd, v[:])
				return
			}
			q := slots[e.UserData]
			slots[e.UserData] = nil
			free = append(free, e.UserData)
			inflight--
			q.res = e.Res
			q.done <- struct{}{}
		})
		fr.mu.Lock()
		fr.sleeping = false
		fr.mu.Unlock()
	}
}
