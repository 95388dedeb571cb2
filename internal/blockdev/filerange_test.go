package blockdev

import (
	"os"
	"path/filepath"
	"testing"
)

func TestFileExtents(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(8 << 20); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 1<<20), 2<<20); err != nil { // allocated, even if zero
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	var got []Extent
	FileExtents(f, 1<<20, 4<<20, 100<<20, func(o, l int64, fl ExtentFlags) {
		got = append(got, Extent{Off: o, Len: l, Flags: fl})
	})
	want := []Extent{
		{Off: 100 << 20, Len: 1 << 20, Flags: ExtentHole | ExtentZero},
		{Off: 101 << 20, Len: 1 << 20},
		{Off: 102 << 20, Len: 2 << 20, Flags: ExtentHole | ExtentZero},
	}
	if len(got) != len(want) {
		t.Fatalf("extents %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("extent %d: %+v, want %+v (all: %+v)", i, got[i], want[i], got)
		}
	}
}

func TestZeroFileRangeAndAppendExtent(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data := make([]byte, 3<<20)
	for i := range data {
		data[i] = 0xa5
	}
	if _, err := f.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		off, n  int64
		mayTrim bool
	}{{4096, 1 << 20, false}, {2 << 20, 512 << 10, true}} {
		if err := ZeroFileRange(f, tc.off, tc.n, tc.mayTrim); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, tc.n+2)
		if _, err := f.ReadAt(got, tc.off-1); err != nil {
			t.Fatal(err)
		}
		if got[0] != 0xa5 || got[len(got)-1] != 0xa5 || !IsZero(got[1:len(got)-1]) {
			t.Fatalf("ZeroFileRange(%d, %d, %v) zeroed the wrong bytes", tc.off, tc.n, tc.mayTrim)
		}
	}
	var out []Extent
	out = AppendExtent(out, 0, 10, ExtentZero)
	out = AppendExtent(out, 10, 5, ExtentZero)
	out = AppendExtent(out, 15, 5, 0)
	out = AppendExtent(out, 30, 5, 0) // not contiguous
	want := []Extent{{0, 15, ExtentZero}, {15, 5, 0}, {30, 5, 0}}
	if len(out) != len(want) || out[0] != want[0] || out[1] != want[1] || out[2] != want[2] {
		t.Fatalf("AppendExtent: %+v, want %+v", out, want)
	}
}
