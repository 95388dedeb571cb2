package ublk

import (
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// io_uring UAPI (linux/io_uring.h) used here.
const (
	iouringSetupSQE128   = 1 << 10    // IORING_SETUP_SQE128: 128-byte SQEs, room for ublk's 32-byte control command
	iouringFeatSingleMap = 1 << 0     // IORING_FEAT_SINGLE_MMAP: SQ and CQ rings share one mapping
	iouringEnterGetEvent = 1 << 0     // IORING_ENTER_GETEVENTS
	iouringOffSQRing     = 0          // IORING_OFF_SQ_RING
	iouringOffCQRing     = 0x8000000  // IORING_OFF_CQ_RING
	iouringOffSQEs       = 0x10000000 // IORING_OFF_SQES
	iouringOpPollAdd     = 6          // IORING_OP_POLL_ADD
	iouringOpNop         = 0          // IORING_OP_NOP
	iouringOpURingCmd    = 46         // IORING_OP_URING_CMD
	sqeSize              = 128        // bytes per SQE with IORING_SETUP_SQE128
	cqeSize              = 16         // bytes per CQE without IORING_SETUP_CQE32
	maxRingEntries       = 4096       // the most SQ entries a ring here asks for
)

// sqringOffsets is struct io_sqring_offsets.
type sqringOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

// cqringOffsets is struct io_cqring_offsets.
type cqringOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

// uringParams is struct io_uring_params.
type uringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	resv                                                                   [3]uint32
	sqOff                                                                  sqringOffsets
	cqOff                                                                  cqringOffsets
}

// sqe is one 128-byte submission queue entry (struct io_uring_sqe followed by
// the 80 bytes of command data IORING_SETUP_SQE128 adds). cmdOp shares its
// place with the 64-bit file offset (sqe->off): a uring_cmd's opcode.
type sqe struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	cmdOp       uint32 // also the low half of sqe->off
	pad1        uint32
	addr        uint64
	len         uint32
	opFlags     uint32 // rw_flags, poll32_events, uring_cmd_flags, ...
	userData    uint64
	bufIndex    uint16
	personality uint16
	fileIndex   uint32
	cmd         [80]byte // sqe->cmd: addr3 and beyond
}

// cqe is struct io_uring_cqe.
type cqe struct {
	userData uint64
	res      int32
	flags    uint32
}

// ring is one io_uring instance with 128-byte SQEs. It is not safe for
// concurrent use: one goroutine owns it (a ublk queue locks its OS thread, as
// the driver requires all of a queue's commands to come from one task).
type ring struct {
	fd              int
	sqMem, cqMem    []byte // cqMem aliases sqMem with IORING_FEAT_SINGLE_MMAP
	sqeMem          []byte
	sqHead, sqTail  *uint32
	sqMask, sqCount uint32
	sqArray         []uint32
	cqHead, cqTail  *uint32
	cqMask          uint32
	cqes            []cqe
	pending         uint32 // our SQ tail: SQEs filled in but not yet published
	sqes            []sqe
}

// newRing sets up an io_uring of at least entries SQEs (a power of two is
// taken by the kernel) and maps its rings.
func newRing(entries uint32) (*ring, error) {
	if entries == 0 || entries > maxRingEntries {
		return nil, fmt.Errorf("io_uring: %d entries is outside [1, %d]", entries, maxRingEntries)
	}
	var p uringParams
	p.flags = iouringSetupSQE128
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", errno)
	}
	r := &ring{fd: int(fd)}
	if err := r.mapRings(&p); err != nil {
		r.close()
		return nil, err
	}
	return r, nil
}

func (r *ring) mapRings(p *uringParams) error {
	sqSize := int(p.sqOff.array) + int(p.sqEntries)*4
	cqSize := int(p.cqOff.cqes) + int(p.cqEntries)*cqeSize
	single := p.features&iouringFeatSingleMap != 0
	if single {
		sqSize = max(sqSize, cqSize)
	}
	var err error
	prot, flags := unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE
	if r.sqMem, err = unix.Mmap(r.fd, iouringOffSQRing, sqSize, prot, flags); err != nil {
		return fmt.Errorf("io_uring: map the SQ ring: %w", err)
	}
	r.cqMem = r.sqMem
	if !single {
		if r.cqMem, err = unix.Mmap(r.fd, iouringOffCQRing, cqSize, prot, flags); err != nil {
			r.cqMem = nil
			return fmt.Errorf("io_uring: map the CQ ring: %w", err)
		}
	}
	if r.sqeMem, err = unix.Mmap(r.fd, iouringOffSQEs, int(p.sqEntries)*sqeSize, prot, flags); err != nil {
		return fmt.Errorf("io_uring: map the SQEs: %w", err)
	}
	r.sqHead = u32At(r.sqMem, p.sqOff.head)
	r.sqTail = u32At(r.sqMem, p.sqOff.tail)
	r.sqMask = *u32At(r.sqMem, p.sqOff.ringMask)
	r.sqCount = *u32At(r.sqMem, p.sqOff.ringEntries)
	r.sqArray = unsafe.Slice(u32At(r.sqMem, p.sqOff.array), p.sqEntries)
	r.cqHead = u32At(r.cqMem, p.cqOff.head)
	r.cqTail = u32At(r.cqMem, p.cqOff.tail)
	r.cqMask = *u32At(r.cqMem, p.cqOff.ringMask)
	r.cqes = unsafe.Slice((*cqe)(unsafe.Pointer(&r.cqMem[p.cqOff.cqes])), p.cqEntries)
	r.sqes = unsafe.Slice((*sqe)(unsafe.Pointer(&r.sqeMem[0])), p.sqEntries)
	r.pending = atomic.LoadUint32(r.sqTail)
	return nil
}

func u32At(b []byte, off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&b[off])) }

// errRingFull is returned by getSQE when every SQ slot holds an SQE the
// kernel has not consumed yet; the caller submits and tries again.
var errRingFull = errors.New("io_uring: submission queue full")

// getSQE returns the next free SQE, zeroed, or errRingFull.
func (r *ring) getSQE() (*sqe, error) {
	head := atomic.LoadUint32(r.sqHead)
	if r.pending-head >= r.sqCount {
		return nil, errRingFull
	}
	idx := r.pending & r.sqMask
	r.sqArray[idx] = idx
	r.pending++
	s := &r.sqes[idx]
	*s = sqe{}
	return s, nil
}

// unsubmitted is the number of SQEs filled in that the kernel has not taken.
func (r *ring) unsubmitted() uint32 { return r.pending - atomic.LoadUint32(r.sqHead) }

// submit publishes the filled-in SQEs and enters the kernel, waiting for at
// least wait completions. An interrupted wait (EINTR, as Go's preemption
// signals cause) is retried.
func (r *ring) submit(wait uint32) error {
	atomic.StoreUint32(r.sqTail, r.pending)
	for {
		n := r.unsubmitted()
		flags := uintptr(0)
		if wait > 0 {
			flags = iouringEnterGetEvent
		}
		_, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(n), uintptr(wait), flags, 0, 0)
		switch errno {
		case 0:
			if wait > 0 && r.ready() == 0 {
				continue
			}
			return nil
		case unix.EINTR:
			continue
		default:
			return fmt.Errorf("io_uring_enter: %w", errno)
		}
	}
}

// ready is the number of completions waiting to be reaped.
func (r *ring) ready() uint32 { return atomic.LoadUint32(r.cqTail) - atomic.LoadUint32(r.cqHead) }

// reap calls fn for every waiting completion, then releases their slots.
func (r *ring) reap(fn func(cqe)) int {
	head := atomic.LoadUint32(r.cqHead)
	tail := atomic.LoadUint32(r.cqTail)
	for i := head; i != tail; i++ {
		fn(r.cqes[i&r.cqMask])
	}
	atomic.StoreUint32(r.cqHead, tail)
	return int(tail - head)
}

// close unmaps the rings and closes the io_uring; the kernel cancels
// whatever was still in flight.
func (r *ring) close() error {
	if r.sqeMem != nil {
		_ = unix.Munmap(r.sqeMem)
	}
	if r.cqMem != nil && (r.sqMem == nil || &r.cqMem[0] != &r.sqMem[0]) {
		_ = unix.Munmap(r.cqMem)
	}
	if r.sqMem != nil {
		_ = unix.Munmap(r.sqMem)
	}
	r.sqMem, r.cqMem, r.sqeMem, r.sqes, r.cqes, r.sqArray = nil, nil, nil, nil, nil, nil
	if r.fd < 0 {
		return nil
	}
	err := unix.Close(r.fd)
	r.fd = -1
	return err
}
