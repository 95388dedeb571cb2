package imageops

import (
	"bytes"
	"context"
	"sync/atomic"
	"testing"

	"vdisk/internal/blockdev"
)

// TestPlanDD: qemu-img dd's arithmetic (count counts from the input's
// start, skipped blocks included; a skip past the end copies nothing),
// e.g. qemu-img dd bs=1M skip=1 count=2 of a 4 MiB image writes 1 MiB.
func TestPlanDD(t *testing.T) {
	for _, c := range []struct {
		size int64
		o    DDOptions
		want DDPlan
	}{
		{4 << 20, DDOptions{BS: 1 << 20, Skip: 1, Count: 2, HasCount: true}, DDPlan{In: 1 << 20, Len: 1 << 20, OutSize: 1 << 20}},
		{4 << 20, DDOptions{BS: 64 << 10, Skip: 3}, DDPlan{In: 3 << 16, Len: 4<<20 - 3<<16, OutSize: 4<<20 - 3<<16}},
		{4 << 20, DDOptions{BS: 1 << 20, Skip: 9}, DDPlan{In: 4 << 20, OutSize: 0, CannotSkip: true}},
		{4 << 20, DDOptions{BS: 1024, Count: 1024, HasCount: true}, DDPlan{Len: 1 << 20, OutSize: 1 << 20}},
		{4 << 20, DDOptions{BS: 512, Seek: 8}, DDPlan{Len: 4 << 20, Out: 4096, OutSize: 4<<20 + 4096}},
		{1000, DDOptions{BS: 300, Skip: 1, Seek: 2}, DDPlan{In: 300, Len: 700, Out: 600, OutSize: 1300}},
	} {
		got, err := PlanDD(c.size, c.o)
		if err != nil || got != c.want {
			t.Errorf("%d %+v: %+v %v, want %+v", c.size, c.o, got, err, c.want)
		}
	}
	for _, o := range []DDOptions{{BS: 0}, {BS: 1 << 31}, {BS: 512, Seek: 1 << 62}} {
		if _, err := PlanDD(1<<20, o); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
}

// TestDD: the planned range lands at the output offset; bytes around it
// stay as they were, zero runs of the input are written as zeroes into
// an output that is not new.
func TestDD(t *testing.T) {
	src := blockdev.NewMem(1 << 20)
	pat := bytes.Repeat([]byte{7}, 1<<20)
	if _, err := src.WriteAt(pat[:100000], 3000); err != nil {
		t.Fatal(err)
	}
	dst := blockdev.NewMem(2 << 20)
	if _, err := dst.WriteAt(bytes.Repeat([]byte{9}, 2<<20), 0); err != nil {
		t.Fatal(err)
	}
	p, err := PlanDD(src.Size(), DDOptions{BS: 1000, Skip: 2, Count: 500, HasCount: true, Seek: 5})
	if err != nil {
		t.Fatal(err)
	}
	var done atomic.Int64
	if err := DD(context.Background(), dst, src, p, false, func(n int64) { done.Add(n) }); err != nil {
		t.Fatal(err)
	}
	if done.Load() != p.Len {
		t.Errorf("progress %d, want %d", done.Load(), p.Len)
	}
	want := bytes.Repeat([]byte{9}, 2<<20)
	s := make([]byte, 1<<20)
	if _, err := src.ReadAt(s, 0); err != nil {
		t.Fatal(err)
	}
	copy(want[5000:], s[2000:500000])
	got := make([]byte, 2<<20)
	if _, err := dst.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Error("the output differs from what dd should have written")
	}
	if err := DD(context.Background(), blockdev.NewMem(1000), src, p, true, nil); err == nil {
		t.Error("an output too small was written")
	}
}
