package crypt

import (
	"slices"
	"sync"
)

// rangeLock serialises conflicting accesses to byte ranges: two requests
// conflict when their ranges overlap and at least one of them writes.
// Requests are granted in arrival order among conflicting ones (a waiting
// writer is not overtaken by later readers of the same range), which keeps
// it fair and free of deadlock; disjoint requests never wait for each other.
// The ranges are sector-aligned by the caller, so this is the per-sector lock
// that makes read-modify-write of a partial sector atomic.
//
// mu guards only the list of requests; no I/O happens under it.
type rangeLock struct {
	mu   sync.Mutex
	cond *sync.Cond
	// reqs holds granted and waiting requests in arrival order.
	reqs []*lockReq
}

// lockReq is one request for [start, end).
type lockReq struct {
	start, end int64
	write      bool
}

func newRangeLock() *rangeLock {
	l := &rangeLock{}
	l.cond = sync.NewCond(&l.mu)
	return l
}

func (a *lockReq) conflicts(b *lockReq) bool {
	return (a.write || b.write) && a.start < b.end && b.start < a.end
}

// lock waits until [start, end) can be accessed (for writing when write is
// set) and returns the handle to pass to unlock.
func (l *rangeLock) lock(start, end int64, write bool) *lockReq {
	r := &lockReq{start: start, end: end, write: write}
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
func (l *rangeLock) blocked(r *lockReq) bool {
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

// unlock releases a request returned by lock.
func (l *rangeLock) unlock(r *lockReq) {
	l.mu.Lock()
	if i := slices.Index(l.reqs, r); i >= 0 {
		l.reqs = slices.Delete(l.reqs, i, i+1)
	}
	l.mu.Unlock()
	l.cond.Broadcast()
}
