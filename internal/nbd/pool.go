package nbd

import (
	"math/bits"
	"sync"

	"vdisk/internal/blockdev"
)

// Buffer pooling. Buffers come in power-of-two classes from minBufSize up;
// a request for n bytes gets a buffer of the smallest class that holds n,
// so the pooled memory of a connection is bounded by its byte budget.
const (
	minBufShift = 12 // 4 KiB
	minBufSize  = 1 << minBufShift
	maxBufShift = 32 // classes up to 4 GiB; MaxPayload is far below
)

var bufPools [maxBufShift - minBufShift + 1]sync.Pool

// bufClass returns the pool index for n bytes.
func bufClass(n int) int {
	if n <= minBufSize {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufShift
}

// getBuf returns a buffer of length n from the pool. n must be positive
// and at most 1<<maxBufShift.
func getBuf(n int) *[]byte {
	c := bufClass(n)
	if p, ok := bufPools[c].Get().(*[]byte); ok {
		*p = (*p)[:n]
		return p
	}
	// Page-aligned, so that a file opened for direct I/O takes the
	// buffer without a bounce.
	b := blockdev.AlignedBuffer(1<<(c+minBufShift), minBufSize)[:n]
	return &b
}

// putBuf returns b to its pool.
func putBuf(b *[]byte) {
	if b == nil || cap(*b) < minBufSize {
		return
	}
	bufPools[bufClass(cap(*b))].Put(b)
}

// budget bounds the requests of one connection: at most maxN in flight
// and, unless a single request is larger, at most maxBytes of buffers.
// The reader acquires before reading a request's payload; the worker
// releases after its reply is written.
type budget struct {
	waiting  int // acquirers waiting (tests watch it)
	mu       sync.Mutex
	cond     sync.Cond
	n        int
	bytes    int64
	maxN     int
	maxBytes int64
}

func (b *budget) init(maxN int, maxBytes int64) {
	b.maxN, b.maxBytes = maxN, maxBytes
	b.cond.L = &b.mu
}

// acquire waits until one more request of size bytes fits.
func (b *budget) acquire(size int64) {
	b.mu.Lock()
	for b.n >= b.maxN || (b.bytes > 0 && b.bytes+size > b.maxBytes) {
		b.waiting++
		b.cond.Wait()
		b.waiting--
	}
	b.n++
	b.bytes += size
	b.mu.Unlock()
}

// release gives back what acquire took.
func (b *budget) release(size int64) {
	b.mu.Lock()
	b.n--
	b.bytes -= size
	b.mu.Unlock()
	b.cond.Broadcast()
}

// waiters returns how many acquirers wait.
func (b *budget) waiters() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.waiting
}
