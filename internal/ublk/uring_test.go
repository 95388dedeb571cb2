package ublk

import (
	"errors"
	"testing"
)

// TestRingNop drives a real io_uring with NOPs, many times round a small
// ring, checking the SQ full condition and that every completion comes back
// once with its user data, across the indices' wrap-around of the mask.
func TestRingNop(t *testing.T) {
	r, err := newRing(4)
	if err != nil {
		t.Skipf("no io_uring on this kernel: %v", err)
	}
	defer r.close()
	if r.sqCount != 4 || r.sqMask != 3 || len(r.cqes) < 4 {
		t.Fatalf("ring of 4: sqCount %d, sqMask %d, %d CQEs", r.sqCount, r.sqMask, len(r.cqes))
	}
	const total = 1003 // not a multiple of the batch or the ring size
	next, seen := uint64(0), uint64(0)
	for seen < total {
		batch := 0
		for next < total {
			s, err := r.getSQE()
			if errors.Is(err, errRingFull) {
				if batch != int(r.sqCount) {
					t.Fatalf("ring full after %d SQEs, want %d", batch, r.sqCount)
				}
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			s.opcode = iouringOpNop
			s.userData = next
			next++
			batch++
		}
		if err := r.submit(uint32(batch)); err != nil {
			t.Fatal(err)
		}
		if r.unsubmitted() != 0 {
			t.Fatalf("%d SQEs left unsubmitted", r.unsubmitted())
		}
		n := r.reap(func(e cqe) {
			if e.userData != seen || e.res != 0 {
				t.Fatalf("completion %d: user data %d, res %d", seen, e.userData, e.res)
			}
			seen++
		})
		if n != batch {
			t.Fatalf("reaped %d completions, submitted %d", n, batch)
		}
	}
	if r.ready() != 0 {
		t.Fatalf("%d completions left over", r.ready())
	}
}

func TestNewRingBounds(t *testing.T) {
	for _, n := range []uint32{0, maxRingEntries + 1} {
		if r, err := newRing(n); err == nil {
			r.close()
			t.Errorf("newRing(%d) succeeded", n)
		}
	}
}

func TestDescArrayGeometry(t *testing.T) {
	tests := []struct {
		name     string
		q, depth int
		wantOff  int64
		wantSize int
	}{
		{name: "queue 0, depth 1", q: 0, depth: 1, wantOff: 0, wantSize: 4096},
		{name: "queue 0, depth 171 fills a page", q: 0, depth: 170, wantOff: 0, wantSize: 4096},
		{name: "queue 0, depth 171 needs two", q: 0, depth: 171, wantOff: 0, wantSize: 8192},
		// the driver spaces queues by UBLK_MAX_QUEUE_DEPTH descriptors: 4096*24 = 96 KiB
		{name: "queue 1", q: 1, depth: 64, wantOff: 98304, wantSize: 4096},
		{name: "queue 3", q: 3, depth: 4096, wantOff: 3 * 98304, wantSize: 98304},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := descArrayOffset(tt.q, 4096); got != tt.wantOff {
				t.Errorf("offset %d, want %d", got, tt.wantOff)
			}
			if got := descArraySize(tt.depth, 4096); got != tt.wantSize {
				t.Errorf("size %d, want %d", got, tt.wantSize)
			}
		})
	}
}
