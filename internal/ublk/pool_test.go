package ublk

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestPool submits every tag of a queue several times over and checks each
// result comes back once, through the eventfd wakeup, with its own result,
// while the workers run in parallel.
func TestPool(t *testing.T) {
	const depth, rounds, workers = 32, 20, 4
	var running, most atomic.Int32
	gate := make(chan struct{}) // closed once all workers run at once
	var gateOnce sync.Once
	p, err := newPool(workers, depth, func(tag uint16) int32 {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		if n == workers {
			gateOnce.Do(func() { close(gate) })
		}
		select {
		case <-gate:
		case <-time.After(time.Minute):
		}
		return int32(tag) * 10
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	for range rounds {
		for tag := range uint16(depth) {
			p.submit(tag)
		}
		seen := make(map[uint16]bool)
		for len(seen) < depth {
			fds := []unix.PollFd{{Fd: int32(p.doneFD), Events: unix.POLLIN}}
			if _, err := unix.Poll(fds, 10_000); err != nil && err != unix.EINTR {
				t.Fatal(err)
			}
			if fds[0].Revents&unix.POLLIN == 0 {
				continue
			}
			for _, c := range p.completed() {
				if seen[c.tag] || c.result != int32(c.tag)*10 {
					t.Fatalf("completion %+v: seen before %v", c, seen[c.tag])
				}
				seen[c.tag] = true
			}
		}
	}
	if extra := p.completed(); len(extra) != 0 {
		t.Fatalf("%d completions left over", len(extra))
	}
	if got := most.Load(); got != workers {
		t.Fatalf("at most %d requests ran at once, want %d", got, workers)
	}
}
