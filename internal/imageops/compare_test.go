package imageops

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"vdisk/internal/blockdev"
)

func memWith(t *testing.T, size int64, pokes map[int64]byte) *blockdev.Mem {
	t.Helper()
	m := blockdev.NewMem(size)
	for off, b := range pokes {
		if _, err := m.WriteAt([]byte{b}, off); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

// TestCompareFirstDifference: the reported offset is the start of the
// first differing sector, the lowest one even when later pieces (compared
// in parallel) differ too.
func TestCompareFirstDifference(t *testing.T) {
	const size = 16 << 20
	base := map[int64]byte{5: 1, 3 << 20: 2, 9<<20 + 100: 3}
	for _, c := range []struct {
		name  string
		pokes map[int64]byte
		want  Outcome
		off   int64
	}{
		{"identical", nil, Identical, 0},
		{"first byte", map[int64]byte{0: 9}, ContentMismatch, 0},
		{"mid sector", map[int64]byte{1000000: 9, 15 << 20: 9}, ContentMismatch, 999936},
		{"several", map[int64]byte{size - 1: 9, 12 << 20: 9, 2<<20 + 513: 9}, ContentMismatch, 2<<20 + 512},
		{"last byte", map[int64]byte{size - 1: 9}, ContentMismatch, size - 512},
	} {
		t.Run(c.name, func(t *testing.T) {
			a := memWith(t, size, base)
			b := memWith(t, size, base)
			for off, v := range c.pokes {
				if _, err := b.WriteAt([]byte{v}, off); err != nil {
					t.Fatal(err)
				}
			}
			for _, w := range []int{1, 8} {
				r, err := Compare(context.Background(), Image{"a", a}, Image{"b", b}, CompareOptions{Workers: w})
				if err != nil {
					t.Fatal(err)
				}
				if r.Outcome != c.want || r.Offset != c.off {
					t.Errorf("workers %d: %+v, want outcome %d at %d", w, r, c.want, c.off)
				}
			}
		})
	}
}

// TestCompareSizes: a larger image's extra area must read as zeroes
// (without -s), and -s fails on the sizes alone.
func TestCompareSizes(t *testing.T) {
	small := memWith(t, 4<<20, map[int64]byte{7: 1})
	big := memWith(t, 8<<20, map[int64]byte{7: 1})
	var done atomic.Int64
	r, err := Compare(context.Background(), Image{"s", small}, Image{"b", big}, CompareOptions{Progress: func(n int64) { done.Add(n) }})
	if err != nil || r.Outcome != Identical {
		t.Fatalf("%+v %v", r, err)
	}
	if got := r.Messages(); len(got) != 2 || got[0] != "Warning: Image size mismatch!" || got[1] != "Images are identical." {
		t.Errorf("messages %q", got)
	}
	if done.Load() != 8<<20 {
		t.Errorf("progress reported %d bytes, want %d", done.Load(), 8<<20)
	}
	if _, err := big.WriteAt([]byte{1}, 6<<20+600); err != nil {
		t.Fatal(err)
	}
	r, err = Compare(context.Background(), Image{"b", big}, Image{"s", small}, CompareOptions{})
	if err != nil || r.Outcome != ContentMismatch || r.Offset != 6<<20+512 {
		t.Fatalf("%+v %v", r, err)
	}
	if got := r.Messages(); len(got) != 2 || got[0] != "Warning: Image size mismatch!" || got[1] != "Content mismatch at offset 6291968!" {
		t.Errorf("messages %q", got)
	}
	r, err = Compare(context.Background(), Image{"s", small}, Image{"b", big}, CompareOptions{Strict: true})
	if err != nil || r.Outcome != SizeMismatch || r.Messages()[0] != "Strict mode: Image size mismatch!" {
		t.Fatalf("%+v %v", r, err)
	}
}

// failing reads fail past an offset.
type failing struct {
	*blockdev.Mem
	from int64
}

func (f failing) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > f.from {
		return 0, errors.New("boom")
	}
	return f.Mem.ReadAt(p, off)
}

func TestCompareReadError(t *testing.T) {
	a := memWith(t, 8<<20, map[int64]byte{6 << 20: 1})
	b := failing{memWith(t, 8<<20, map[int64]byte{6 << 20: 1}), 5 << 20}
	_, err := Compare(context.Background(), Image{"a", a}, Image{"b", b}, CompareOptions{})
	code, ok := IsCompareError(err)
	if !ok || code != 4 {
		t.Fatalf("err %v: code %d", err, code)
	}
	// A difference before the failing read is what is reported.
	if _, err := a.WriteAt([]byte{1}, 1<<20); err != nil {
		t.Fatal(err)
	}
	r, err := Compare(context.Background(), Image{"a", a}, Image{"b", b}, CompareOptions{Workers: 8})
	if err != nil || r.Outcome != ContentMismatch || r.Offset != 1<<20 {
		t.Fatalf("%+v %v", r, err)
	}
}
