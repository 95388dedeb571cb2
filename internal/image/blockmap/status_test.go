package blockmap

import (
	"errors"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// statusOf asks m about [off, off+n) and fails the test on error.
func statusOf(t *testing.T, m *Map, off, n int64) image.Status {
	t.Helper()
	st, err := m.LayerStatus(off, n)
	if err != nil {
		t.Fatalf("LayerStatus(%d, %d): %v", off, n, err)
	}
	return st
}

// TestLayerStatusRules checks the runs LayerStatus reports of a toy
// image under each of the StatusRules: data blocks merged only while
// they follow each other in the file (or compressed, at no offset), zero
// blocks, unallocated blocks by the rules, a partial block's sectors,
// Whole, and the refusal of empty and outside ranges.
func TestLayerStatusRules(t *testing.T) {
	const bs, size = 64 << 10, 1 << 20
	parent, _ := parentDev(size)
	f := memFile()
	m, _ := openToy(t, f, toyOpts{size: size, bs: bs})
	// Blocks 0 and 1 follow each other in the file; 5 comes before 3.
	for _, blk := range []int64{0, 1, 5, 3} {
		if _, err := m.WriteAt([]byte{1}, blk*bs+100); err != nil {
			t.Fatal(err)
		}
	}
	m.mu.Lock()
	err := m.put(7, Entry{State: Zero})
	m.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Flush(); err != nil {
		t.Fatal(err)
	}
	start := toyOpts{size: size, bs: bs}.dataStart()
	data := func(n, off int64) image.Status {
		return image.Status{Len: n, Allocated: true, Data: true, File: f, Offset: off}
	}
	for _, tc := range []struct {
		name   string
		rules  StatusRules
		parent blockdev.Device
		want   map[[2]int64]image.Status // {off, n}: status
	}{
		{name: "differencing", want: map[[2]int64]image.Status{
			{0, size}:             data(2*bs, start),
			{100, size - 100}:     data(2*bs-100, start+100),
			{bs, bs / 2}:          data(bs/2, start+bs),
			{2 * bs, size - 2*bs}: {Len: bs},
			{3 * bs, size - 3*bs}: data(bs, start+3*bs),
			{5 * bs, size - 5*bs}: data(bs, start+2*bs),
			{7 * bs, size - 7*bs}: {Len: bs, Allocated: true, Zero: true},
			{8 * bs, 8 * bs}:      {Len: 8 * bs},
		}},
		{name: "own-zero", rules: StatusRules{OwnZero: true}, want: map[[2]int64]image.Status{
			{2 * bs, size - 2*bs}: {Len: bs, Allocated: true, Zero: true},
			{8 * bs, 8 * bs}:      {Len: 8 * bs, Allocated: true, Zero: true},
		}},
		{name: "backing-none", rules: StatusRules{Backing: true}, want: map[[2]int64]image.Status{
			{2 * bs, size - 2*bs}: {Len: bs, Zero: true},
		}},
		{name: "backing", rules: StatusRules{Backing: true}, parent: parent, want: map[[2]int64]image.Status{
			{2 * bs, size - 2*bs}: {Len: bs},
		}},
		{name: "compressed", rules: StatusRules{Compressed: true}, want: map[[2]int64]image.Status{
			{0, size}:             {Len: 2 * bs, Allocated: true, Data: true, Compressed: true},
			{3 * bs, size - 3*bs}: {Len: bs, Allocated: true, Data: true, Compressed: true},
		}},
		{name: "whole", rules: StatusRules{Whole: true}, want: map[[2]int64]image.Status{
			{bs, size - bs}: {Len: size - bs, Allocated: true, Data: true},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, _ := openToy(t, f, toyOpts{size: size, bs: bs, rules: tc.rules, parent: tc.parent, readOnly: true})
			for q, want := range tc.want {
				if got := statusOf(t, m, q[0], q[1]); got != want {
					t.Errorf("LayerStatus(%d, %d) = %+v, want %+v", q[0], q[1], got, want)
				}
			}
			if _, err := m.LayerStatus(0, 0); !errors.Is(err, image.ErrNoStatus) {
				t.Errorf("an empty range: %v, want ErrNoStatus", err)
			}
			if _, err := m.LayerStatus(size-512, 1024); err == nil {
				t.Error("a range past the end: no error")
			}
			if got := m.BackingDevice(); got != tc.parent {
				t.Errorf("BackingDevice = %v, want %v", got, tc.parent)
			}
		})
	}
}

// TestLayerStatusPartial checks that a partial block reports its sectors
// in the file as data at their offset and the others as the parent's.
func TestLayerStatusPartial(t *testing.T) {
	const bs, size = 32 << 10, 256 << 10
	parent, _ := parentDev(size)
	m, _ := openToy(t, memFile(), toyOpts{size: size, bs: bs, partial: true, parent: parent})
	if _, err := m.WriteAt(make([]byte, 1000), bs+512); err != nil { // sectors 1 and 2 of block 1
		t.Fatal(err)
	}
	e, err := m.Lookup(1)
	if err != nil || e.State != Partial {
		t.Fatalf("block 1: %+v, %v", e, err)
	}
	for _, tc := range []struct {
		off, n int64
		want   image.Status
	}{
		{bs, size - bs, image.Status{Len: 512}},
		{bs + 512, size - bs - 512, image.Status{Len: 1024, Allocated: true, Data: true, File: m.File(), Offset: e.Off + 512}},
		{bs + 1024, 100, image.Status{Len: 100, Allocated: true, Data: true, File: m.File(), Offset: e.Off + 1024}},
		{bs + 1536, size - bs - 1536, image.Status{Len: bs - 1536}},
		{0, size, image.Status{Len: bs}},
	} {
		if got := statusOf(t, m, tc.off, tc.n); got != tc.want {
			t.Errorf("LayerStatus(%d, %d) = %+v, want %+v", tc.off, tc.n, got, tc.want)
		}
	}
}
