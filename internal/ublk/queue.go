package ublk

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"vdisk/internal/uring"

	"vdisk/internal/blockdev"
)

// User data of a queue's polls; I/O commands use their tag.
const (
	stopTag = 1 << 32   // the stop eventfd is readable
	doneTag = 1<<32 + 1 // the completion eventfd is readable
)

// queue serves one ublk hardware queue: an io_uring of its own, the mmap'd
// descriptor array, and one data buffer per tag. Everything in it belongs to
// the goroutine running serve, which locks its OS thread: the driver takes
// a queue's commands only from the task that fetched first.
type queue struct {
	id      uint16
	depth   int
	bufSize int
	cdev    *os.File
	stopFD  int // eventfd that becomes readable when the queue must stop
	dev     blockdev.Device
	encoded bool
	workers int // goroutines handling this queue's requests
	log     *slog.Logger

	r     *uring.Ring
	descs []byte // mmap'd ublksrv_io_desc array
	bufs  []byte // depth * bufSize bytes
	live  int    // tags the driver holds a command for

	pool *pool // the workers, from setup to the end of serve
}

// setup maps the queue's memory and submits one FETCH_REQ per tag.
func (q *queue) setup() error {
	page := os.Getpagesize()
	var err error
	q.descs, err = unix.Mmap(int(q.cdev.Fd()), descArrayOffset(int(q.id), page), descArraySize(q.depth, page),
		unix.PROT_READ, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("ublk: queue %d: map descriptors: %w", q.id, err)
	}
	q.bufs, err = unix.Mmap(-1, 0, q.depth*q.bufSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return fmt.Errorf("ublk: queue %d: allocate buffers: %w", q.id, err)
	}
	if q.r, err = uring.New(uint32(q.depth+2), uring.SetupSQE128); err != nil {
		return fmt.Errorf("ublk: queue %d: %w", q.id, err)
	}
	if q.pool, err = newPool(q.workers, q.depth, q.handle); err != nil {
		return fmt.Errorf("ublk: queue %d: %w", q.id, err)
	}
	if err := q.poll(q.stopFD, stopTag); err != nil {
		return err
	}
	if err := q.poll(q.pool.doneFD, doneTag); err != nil {
		return err
	}
	for tag := range q.depth {
		if err := q.prep(ioFetchReq, uint16(tag), 0); err != nil {
			return err
		}
	}
	if err := q.r.Submit(0); err != nil {
		return fmt.Errorf("ublk: queue %d: fetch: %w", q.id, err)
	}
	q.live = q.depth
	return nil
}

// poll queues a one-shot POLL_ADD for fd becoming readable.
func (q *queue) poll(fd int, tag uint64) error {
	s, err := q.r.GetSQE()
	if err != nil {
		return err
	}
	s.Opcode = uring.OpPollAdd
	s.Fd = int32(fd)
	s.OpFlags = unix.POLLIN
	s.UserData = tag
	return nil
}

// prep queues an I/O command for tag: FETCH_REQ, or COMMIT_AND_FETCH_REQ
// with result.
func (q *queue) prep(nr uint32, tag uint16, result int32) error {
	s, err := q.r.GetSQE()
	if errors.Is(err, uring.ErrFull) {
		if err := q.r.Submit(0); err != nil {
			return err
		}
		s, err = q.r.GetSQE()
	}
	if err != nil {
		return err
	}
	s.Opcode = uring.OpURingCmd
	s.Fd = int32(q.cdev.Fd())
	s.Off = uint64(ioOp(nr, q.encoded))
	s.UserData = uint64(tag)
	c := (*ioCmd)(q.r.Cmd(s))
	*c = ioCmd{qID: q.id, tag: tag, result: result, addr: uint64(uintptr(unsafe.Pointer(&q.bufs[int(tag)*q.bufSize])))}
	return nil
}

// serve hands each request to the worker pool and commits the results the
// pool reports, until the driver aborts every tag or the stop eventfd
// fires. It runs on a locked OS thread that dies with it, so that the
// driver's reference to the task ends with the queue; only this thread
// touches the ring.
func (q *queue) serve() error {
	defer q.pool.close()
	stop := false
	for !stop && q.live > 0 {
		if err := q.r.Submit(1); err != nil {
			return fmt.Errorf("ublk: queue %d: %w", q.id, err)
		}
		var ferr error
		keep := func(err error) {
			if ferr == nil {
				ferr = err
			}
		}
		q.r.Reap(func(e uring.CQE) {
			switch e.UserData {
			case stopTag:
				stop = true
				return
			case doneTag:
				for _, c := range q.pool.completed() {
					keep(q.prep(ioCommitAndFetch, c.tag, c.result))
				}
				keep(q.poll(q.pool.doneFD, doneTag))
				return
			}
			tag := uint16(e.UserData)
			switch e.Res {
			case ioResOK:
				q.pool.submit(tag)
			case ioResAbort:
				q.live--
			default:
				q.live--
				q.log.Error("ublk: io command failed", "queue", q.id, "tag", tag, "err", syscall.Errno(-e.Res))
			}
		})
		if ferr != nil {
			return fmt.Errorf("ublk: queue %d: %w", q.id, ferr)
		}
	}
	// Commit what was handled in the last batch before leaving.
	if q.r.Unsubmitted() > 0 {
		if err := q.r.Submit(0); err != nil {
			return fmt.Errorf("ublk: queue %d: %w", q.id, err)
		}
	}
	return nil
}

// handle performs the request in tag's descriptor on the Device and returns
// the result to commit: bytes transferred, or a negative errno.
func (q *queue) handle(tag uint16) int32 {
	d := *(*ioDesc)(unsafe.Pointer(&q.descs[int(tag)*descSize]))
	off := int64(d.startSector) << sectorShift
	n := int64(d.nrSectors) << sectorShift
	buf := q.bufs[int(tag)*q.bufSize : (int(tag)+1)*q.bufSize]
	var err error
	switch d.opFlags & 0xff {
	case ioOpRead, ioOpWrite:
		if n > int64(len(buf)) {
			q.log.Error("ublk: request larger than its buffer", "queue", q.id, "tag", tag, "bytes", n)
			return -int32(unix.EINVAL)
		}
		if d.opFlags&0xff == ioOpRead {
			_, err = q.dev.ReadAt(buf[:n], off)
		} else {
			_, err = q.dev.WriteAt(buf[:n], off)
			if err == nil && d.opFlags&ioFFUA != 0 {
				err = q.dev.Flush()
			}
		}
		if err == nil {
			return int32(n)
		}
	case ioOpFlush:
		err = q.dev.Flush()
	case ioOpDiscard:
		err = blockdev.Trim(q.dev, off, n)
	case ioOpWriteZeroes:
		err = blockdev.WriteZeroes(q.dev, off, n, d.opFlags&ioFNoUnmap == 0)
	default:
		return -int32(unix.EOPNOTSUPP)
	}
	if err != nil {
		q.log.Debug("ublk: request failed", "queue", q.id, "op", d.opFlags&0xff, "off", off, "len", n, "err", err)
		return -int32(blockdev.Errno(err))
	}
	return 0
}

// close releases the queue's ring and memory.
func (q *queue) close() {
	if q.pool != nil {
		q.pool.close()
	}
	if q.r != nil {
		q.r.Close()
	}
	if q.descs != nil {
		unix.Munmap(q.descs)
	}
	if q.bufs != nil {
		unix.Munmap(q.bufs)
	}
	q.r, q.descs, q.bufs = nil, nil, nil
}

// run is the queue's goroutine: setup, report through ready, serve, clean
// up. The OS thread stays locked and exits with the goroutine.
func (q *queue) run(ready chan<- error) error {
	runtime.LockOSThread()
	defer q.close()
	if err := q.setup(); err != nil {
		ready <- err
		return err
	}
	ready <- nil
	return q.serve()
}
