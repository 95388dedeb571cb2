package blockdev

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
	l := NewRangeLock()
	a := l.Lock(0, 4096, true)
	b := l.Lock(4096, 8192, true) // disjoint: granted at once (a deadlock would hang here)
	r := l.Lock(8192, 12288, false)
	r2 := l.Lock(8192, 12288, false) // readers share

	granted := make(chan *RangeHandle)
	go func() { granted <- l.Lock(2048, 6144, true) }() // overlaps a and b
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
	l.Unlock(a)
	select {
	case <-granted:
		t.Fatal("granted while b still overlaps")
	default:
	}
	l.Unlock(b)
	var w *RangeHandle
	select {
	case w = <-granted:
	case <-time.After(10 * time.Second):
		t.Fatal("writer not granted after both overlapping ranges were released")
	}
	l.Unlock(r)
	l.Unlock(r2)
	l.Unlock(w)
	if len(l.reqs) != 0 {
		t.Fatalf("%d requests left", len(l.reqs))
	}
}
