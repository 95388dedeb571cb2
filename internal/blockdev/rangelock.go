package blockdev

import (
	"slices"
	"sync"
)

// RangeLock serialises conflicting accesses to byte ranges: two requests
// conflict when their ranges overlap and at least one of them writes.
// Requests are granted in arrival order among conflicting ones (a waiting
// writer is not overtaken by later readers of the same range), which keeps
// it fair and free of deadlock; disjoint requests never wait for each other.
// Callers align the ranges to their blocks, so this is the per-block lock
// that makes read-modify-write of a partial block atomic (the LUKS sector
// layer, and a File's unaligned writes under O_DIRECT).
//
// mu guards only the list of requests; no I/O happens under it.
type RangeLock struct {
	mu   sync.Mutex
	cond *sync.Cond
	// reqs holds granted and waiting requests in arrival order.
	reqs []*RangeHandle
}

// RangeHandle is one granted request for [start, end), for Unlock.
type RangeHandle struct {
	start, end int64
	write      bool
}

// NewRangeLock returns an unlocked RangeLock.
func NewRangeLock() *RangeLock {
	l := &RangeLock{}
	l.cond = sync.NewCond(&l.mu)
	return l
}

func (a *RangeHandle) conflicts(b *RangeHandle) bool {
	return (a.write || b.write) && a.start < b.end && b.start < a.end
}

// Lock waits until [start, end) can be accessed (for writing when write is
// set: exclusively) and returns the handle to pass to Unlock.
func (l *RangeLock) Lock(start, end int64, write bool) *RangeHandle {
	r := &RangeHandle{start: start, end: end, write: write}
	l.mu.Lock()
	l.reqs = append(l.reqs, r)
	for l.blocked(r) {
		l.cond.Wait()
	}
	l.mu.Unlock()
	return r
}

// blocked reports whether a request that arrived before r conflicts with it.
// l.mu must be held.
func (l *RangeLock) blocked(r *RangeHandle) bool {
	for _, o := range l.reqs {
		if o == r {
			return false
		}
		if o.conflicts(r) {
			return true
		}
	}
	return false
}

// Unlock releases a request returned by Lock.
func (l *RangeLock) Unlock(r *RangeHandle) {
	l.mu.Lock()
	if i := slices.Index(l.reqs, r); i >= 0 {
		l.reqs = slices.Delete(l.reqs, i, i+1)
	}
	l.mu.Unlock()
	l.cond.Broadcast()
}
