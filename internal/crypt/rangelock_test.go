package crypt

import (
	"testing"
	"time"
)

// waitFor polls cond for up to a generous bound.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestRangeLock(t *testing.T) {
	l := newRangeLock()
	a := l.lock(0, 4096, true)
	b := l.lock(4096, 8192, true) // disjoint: granted at once (a deadlock would hang here)
	r := l.lock(8192, 12288, false)
	r2 := l.lock(8192, 12288, false) // readers share

	granted := make(chan *lockReq)
	go func() { granted <- l.lock(2048, 6144, true) }() // overlaps a and b
	queued := func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return len(l.reqs) == 5
	}
	waitFor(t, "the overlapping writer to queue", queued)
	l.mu.Lock()
	blocked := l.blocked(l.reqs[4])
	l.mu.Unlock()
	if !blocked {
		t.Fatal("a writer overlapping held ranges is not blocked")
	}
	l.unlock(a)
	select {
	case <-granted:
		t.Fatal("granted while b still overlaps")
	default:
	}
	l.unlock(b)
	var w *lockReq
	select {
	case w = <-granted:
	case <-time.After(10 * time.Second):
		t.Fatal("writer not granted after both overlapping ranges were released")
	}
	l.unlock(r)
	l.unlock(r2)
	l.unlock(w)
	if len(l.reqs) != 0 {
		t.Fatalf("%d requests left", len(l.reqs))
	}
}
