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
