package convert

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"sync/atomic"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/blockdev/blockdevtest"
)

// source returns a sparse Mem device with scattered data and zero runs,
// and its expected content.
func source(t *testing.T, size int64) (*blockdev.Mem, []byte) {
	t.Helper()
	src := blockdev.NewMem(size)
	want := make([]byte, size)
	r := rand.New(rand.NewPCG(1, 2))
	for range 40 {
		off := r.Int64N(size - 300<<10)
		n := r.Int64N(300<<10) + 1
		b := want[off : off+n]
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		if _, err := src.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	// data that is all zero but allocated
	if _, err := src.WriteAt(make([]byte, 64<<10), size-64<<10); err != nil {
		t.Fatal(err)
	}
	copy(want[size-64<<10:], make([]byte, 64<<10))
	return src, want
}

func TestCopy(t *testing.T) {
	const size = 16 << 20
	for _, tc := range []struct {
		name              string
		opt               Options
		prefill, zeroedOK bool
	}{
		{name: "sparse into new", opt: Options{Sparse: true, DstZeroed: true}},
		{name: "sparse over old data", opt: Options{Sparse: true}, prefill: true},
		{name: "allocating over old data", opt: Options{Workers: 3, Chunk: 100 << 10}, prefill: true},
		{name: "one worker", opt: Options{Workers: 1, Sparse: true, DstZeroed: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, want := source(t, size)
			dst := blockdev.NewMem(size)
			if tc.prefill {
				junk := bytes.Repeat([]byte{0xee}, size)
				if _, err := dst.WriteAt(junk, 0); err != nil {
					t.Fatal(err)
				}
			}
			var progress atomic.Int64
			tc.opt.Progress = func(n int64) { progress.Add(n) }
			st, err := Copy(context.Background(), dst, src, tc.opt)
			if err != nil {
				t.Fatal(err)
			}
			got := make([]byte, size)
			if _, err := dst.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("destination differs from source")
			}
			if st.Data+st.Zero != size || progress.Load() != size {
				t.Fatalf("stats %+v, progress %d; want them to add up to %d", st, progress.Load(), size)
			}
			if tc.opt.Sparse {
				ext, _ := dst.Extents(size-64<<10, 64<<10)
				if len(ext) != 1 || ext[0].Flags&blockdev.ExtentHole == 0 {
					t.Errorf("zero data was allocated in a sparse copy: %+v", ext)
				}
			}
		})
	}
}

func TestCopyErrors(t *testing.T) {
	src, _ := source(t, 4<<20)
	if _, err := Copy(context.Background(), blockdev.NewMem(2<<20), src, Options{}); err == nil {
		t.Fatal("copy to a smaller device succeeded")
	}
	big := blockdev.NewMem(4<<20 + 8192)
	if st, err := Copy(context.Background(), big, src, Options{Sparse: true, DstZeroed: true}); err != nil || st.Size != 4<<20 {
		t.Fatalf("copy to a larger device: %+v, %v", st, err)
	}
	f := blockdevtest.NewFaulty(blockdev.NewMem(4<<20), blockdevtest.Rule{Ops: blockdevtest.OpWrite, Nth: 3})
	if _, err := Copy(context.Background(), f.Device(), src, Options{Chunk: 64 << 10}); !errors.Is(err, blockdevtest.ErrInjected) {
		t.Fatalf("write fault: %v", err)
	}
	rf := blockdevtest.NewFaulty(src, blockdevtest.Rule{Ops: blockdevtest.OpRead})
	if _, err := Copy(context.Background(), blockdev.NewMem(4<<20), rf.Device(), Options{}); !errors.Is(err, blockdevtest.ErrInjected) {
		t.Fatalf("read fault: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Copy(ctx, blockdev.NewMem(4<<20), src, Options{Chunk: 4096}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled copy: %v", err)
	}
}

func TestCompressNeedsACompressedWriter(t *testing.T) {
	src, dst := blockdev.NewMem(1<<20), blockdev.NewMem(1<<20)
	_, err := Copy(context.Background(), dst, src, Options{Compress: true, DstZeroed: true})
	if !errors.Is(err, blockdev.ErrNotSupported) {
		t.Fatalf("Copy -c to a Mem: %v, want ErrNotSupported", err)
	}
}
