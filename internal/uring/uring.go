// Package uring is an io_uring: one ring, its submissions and its
// completions, over golang.org/x/sys/unix (no cgo, no liburing). ublk
// drives its queues through it and blockdev its files' I/O.
package uring

import (
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// io_uring UAPI (linux/io_uring.h) used here.
const (
	SetupSQE128   = 1 << 10 // IORING_SETUP_SQE128: 128-byte SQEs, room for an 80-byte command (uring_cmd)
	featSingleMap = 1 << 0  // IORING_FEAT_SINGLE_MMAP: SQ and CQ rings share one mapping
	enterGetEvent = 1 << 0  // IORING_ENTER_GETEVENTS

	offSQRing = 0          // IORING_OFF_SQ_RING
	offCQRing = 0x8000000  // IORING_OFF_CQ_RING
	offSQEs   = 0x10000000 // IORING_OFF_SQES

	// MaxEntries is the most SQ entries a ring here asks for.
	MaxEntries = 4096
)

// Opcodes (enum io_uring_op).
const (
	OpNop      = 0  // IORING_OP_NOP
	OpFsync    = 3  // IORING_OP_FSYNC
	OpPollAdd  = 6  // IORING_OP_POLL_ADD
	OpRead     = 22 // IORING_OP_READ
	OpWrite    = 23 // IORING_OP_WRITE
	OpURingCmd = 46 // IORING_OP_URING_CMD
)

// FsyncDatasync is IORING_FSYNC_DATASYNC, in an OpFsync's OpFlags.
const FsyncDatasync = 1

// SQE is struct io_uring_sqe, the 64-byte submission entry. Off is also a
// uring_cmd's cmd_op (its low half); a 128-byte ring's command area begins
// at Addr3 (see Ring.Cmd).
type SQE struct {
	Opcode      uint8
	Flags       uint8
	IOPrio      uint16
	Fd          int32
	Off         uint64 // also cmd_op
	Addr        uint64
	Len         uint32
	OpFlags     uint32 // rw_flags, fsync_flags, poll32_events, uring_cmd_flags...
	UserData    uint64
	BufIndex    uint16
	Personality uint16
	FileIndex   uint32
	Addr3       uint64 // sqe->cmd starts here
	pad2        uint64
}

// CQE is struct io_uring_cqe.
type CQE struct {
	UserData uint64
	Res      int32
	Flags    uint32
}

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

// params is struct io_uring_params.
type params struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	resv                                                                   [3]uint32
	sqOff                                                                  sqringOffsets
	cqOff                                                                  cqringOffsets
}

// Ring is one io_uring instance. It is not safe for concurrent use: one
// goroutine owns it (or a lock serialises its users).
type Ring struct {
	fd              int
	sqeSize         uintptr
	sqMem, cqMem    []byte // cqMem aliases sqMem with IORING_FEAT_SINGLE_MMAP
	sqeMem          []byte
	sqHead, sqTail  *uint32
	sqMask, sqCount uint32
	sqArray         []uint32
	cqHead, cqTail  *uint32
	cqMask          uint32
	cqes            []CQE
	pending         uint32 // our SQ tail: SQEs filled in but not yet published
}

// New sets up an io_uring of at least entries SQEs (the kernel rounds up
// to a power of two) with setup flags (0 or SetupSQE128) and maps it.
// Where io_uring is missing or forbidden (seccomp, io_uring_disabled) the
// error wraps ENOSYS or EPERM.
func New(entries, flags uint32) (*Ring, error) {
	if entries == 0 || entries > MaxEntries {
		return nil, fmt.Errorf("io_uring: %d entries is outside [1, %d]", entries, MaxEntries)
	}
	var p params
	p.flags = flags
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", errno)
	}
	r := &Ring{fd: int(fd), sqeSize: 64}
	if flags&SetupSQE128 != 0 {
		r.sqeSize = 128
	}
	if err := r.mapRings(&p); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

func (r *Ring) mapRings(p *params) error {
	sqSize := int(p.sqOff.array) + int(p.sqEntries)*4
	cqSize := int(p.cqOff.cqes) + int(p.cqEntries)*int(unsafe.Sizeof(CQE{}))
	single := p.features&featSingleMap != 0
	if single {
		sqSize = max(sqSize, cqSize)
	}
	var err error
	prot, flags := unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE
	if r.sqMem, err = unix.Mmap(r.fd, offSQRing, sqSize, prot, flags); err != nil {
		return fmt.Errorf("io_uring: map the SQ ring: %w", err)
	}
	r.cqMem = r.sqMem
	if !single {
		if r.cqMem, err = unix.Mmap(r.fd, offCQRing, cqSize, prot, flags); err != nil {
			r.cqMem = nil
			return fmt.Errorf("io_uring: map the CQ ring: %w", err)
		}
	}
	if r.sqeMem, err = unix.Mmap(r.fd, offSQEs, int(p.sqEntries)*int(r.sqeSize), prot, flags); err != nil {
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
	r.cqes = unsafe.Slice((*CQE)(unsafe.Pointer(&r.cqMem[p.cqOff.cqes])), p.cqEntries)
	r.pending = atomic.LoadUint32(r.sqTail)
	return nil
}

func u32At(b []byte, off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&b[off])) }

// ErrFull is returned by GetSQE when every SQ slot holds an SQE the
// kernel has not consumed yet; the caller submits and tries again.
var ErrFull = errors.New("io_uring: submission queue full")

// Entries is the number of SQ slots.
func (r *Ring) Entries() uint32 { return r.sqCount }

// Slot returns the bytes of SQ slot i (64 or 128 of them), as the kernel
// reads them.
func (r *Ring) Slot(i uint32) []byte {
	i &= r.sqMask
	return r.sqeMem[uintptr(i)*r.sqeSize : uintptr(i+1)*r.sqeSize]
}

// GetSQE returns the next free SQE, zeroed (all 128 bytes in a SQE128
// ring), or ErrFull.
func (r *Ring) GetSQE() (*SQE, error) {
	head := atomic.LoadUint32(r.sqHead)
	if r.pending-head >= r.sqCount {
		return nil, ErrFull
	}
	idx := r.pending & r.sqMask
	r.sqArray[idx] = idx
	r.pending++
	b := r.Slot(idx)
	clear(b)
	return (*SQE)(unsafe.Pointer(&b[0])), nil
}

// Cmd returns the 80-byte command area (sqe->cmd) of s, an SQE of this
// SQE128 ring.
func (r *Ring) Cmd(s *SQE) unsafe.Pointer {
	if r.sqeSize != 128 {
		panic("uring: Cmd on a ring without SQE128")
	}
	return unsafe.Pointer(&s.Addr3)
}

// Unsubmitted is the number of SQEs filled in that the kernel has not taken.
func (r *Ring) Unsubmitted() uint32 { return r.pending - atomic.LoadUint32(r.sqHead) }

// Submit publishes the filled-in SQEs and enters the kernel, waiting for at
// least wait completions. An interrupted wait (EINTR, as Go's preemption
// signals cause) is retried.
func (r *Ring) Submit(wait uint32) error {
	atomic.StoreUint32(r.sqTail, r.pending)
	for {
		n := r.Unsubmitted()
		flags := uintptr(0)
		if wait > 0 {
			flags = enterGetEvent
		}
		_, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(n), uintptr(wait), flags, 0, 0)
		switch errno {
		case 0:
			if wait > 0 && r.Ready() == 0 {
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

// Ready is the number of completions waiting to be reaped.
func (r *Ring) Ready() uint32 { return atomic.LoadUint32(r.cqTail) - atomic.LoadUint32(r.cqHead) }

// Reap calls fn for every waiting completion, then releases their slots.
func (r *Ring) Reap(fn func(CQE)) int {
	head := atomic.LoadUint32(r.cqHead)
	tail := atomic.LoadUint32(r.cqTail)
	for i := head; i != tail; i++ {
		fn(r.cqes[i&r.cqMask])
	}
	atomic.StoreUint32(r.cqHead, tail)
	return int(tail - head)
}

// Close unmaps the rings and closes the io_uring; the kernel cancels
// whatever was still in flight.
func (r *Ring) Close() error {
	if r.sqeMem != nil {
		_ = unix.Munmap(r.sqeMem)
	}
	if r.cqMem != nil && (r.sqMem == nil || &r.cqMem[0] != &r.sqMem[0]) {
		_ = unix.Munmap(r.cqMem)
	}
	if r.sqMem != nil {
		_ = unix.Munmap(r.sqMem)
	}
	r.sqMem, r.cqMem, r.sqeMem, r.cqes, r.sqArray = nil, nil, nil, nil, nil
	if r.fd < 0 {
		return nil
	}
	err := unix.Close(r.fd)
	r.fd = -1
	return err
}
