package uring

import (
	"errors"
	"testing"
	"unsafe"
)

// TestRingNop drives a real io_uring with NOPs, many times round a small
// ring, checking the SQ full condition and that every completion comes back
// once with its user data, across the indices' wrap-around of the mask.
func TestRingNop(t *testing.T) {
	r, err := New(4, 0)
	if err != nil {
		t.Skipf("no io_uring on this kernel: %v", err)
	}
	defer r.Close()
	if r.sqCount != 4 || r.sqMask != 3 || len(r.cqes) < 4 {
		t.Fatalf("ring of 4: sqCount %d, sqMask %d, %d CQEs", r.sqCount, r.sqMask, len(r.cqes))
	}
	const total = 1003 // not a multiple of the batch or the ring size
	next, seen := uint64(0), uint64(0)
	for seen < total {
		batch := 0
		for next < total {
			s, err := r.GetSQE()
			if errors.Is(err, ErrFull) {
				if batch != int(r.sqCount) {
					t.Fatalf("ring full after %d SQEs, want %d", batch, r.sqCount)
				}
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			s.Opcode = OpNop
			s.UserData = next
			next++
			batch++
		}
		if err := r.Submit(uint32(batch)); err != nil {
			t.Fatal(err)
		}
		if r.Unsubmitted() != 0 {
			t.Fatalf("%d SQEs left unsubmitted", r.Unsubmitted())
		}
		n := r.Reap(func(e CQE) {
			if e.UserData != seen || e.Res != 0 {
				t.Fatalf("completion %d: user data %d, res %d", seen, e.UserData, e.Res)
			}
			seen++
		})
		if n != batch {
			t.Fatalf("reaped %d completions, submitted %d", n, batch)
		}
	}
	if r.Ready() != 0 {
		t.Fatalf("%d completions left over", r.Ready())
	}
}

func TestNewRingBounds(t *testing.T) {
	for _, n := range []uint32{0, MaxEntries + 1} {
		if r, err := New(n, 0); err == nil {
			r.Close()
			t.Errorf("New(%d, 0) succeeded", n)
		}
	}
}

// TestParamsLayout checks the setup structures against the kernel ABI
// (linux/io_uring.h, stable since 5.1); the SQE and CQE are checked
// against the installed header by ublk's layout test.
func TestParamsLayout(t *testing.T) {
	var p params
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof io_uring_params", unsafe.Sizeof(p), 120},
		{"features", unsafe.Offsetof(p.features), 20},
		{"sq_off", unsafe.Offsetof(p.sqOff), 40},
		{"cq_off", unsafe.Offsetof(p.cqOff), 80},
		{"sizeof io_sqring_offsets", unsafe.Sizeof(p.sqOff), 40},
		{"sq array", unsafe.Offsetof(p.sqOff.array), 24},
		{"cq cqes", unsafe.Offsetof(p.cqOff.cqes), 20},
		{"sizeof io_uring_sqe", unsafe.Sizeof(SQE{}), 64},
		{"sizeof io_uring_cqe", unsafe.Sizeof(CQE{}), 16},
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
}
