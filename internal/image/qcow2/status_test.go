package qcow2

import (
	"testing"

	"vdisk/internal/image"
	"vdisk/internal/image/imagetest"
)

// craftedImage opens a new 1 MiB-long qcow2 file in memory of a 1 MiB
// disk with 64 KiB clusters (extended L2 entries with extL2) and sets
// the L2 entries (and bitmaps) of its first clusters to es.
func craftedImage(t *testing.T, extL2 bool, es ...[2]uint64) *Image {
	t.Helper()
	f := imagetest.NewMemFile("status.qcow2", nil)
	opt := image.CreateOptions{Format: "qcow2", Size: 1 << 20, ClusterSize: 64 << 10}
	if extL2 {
		opt.Options = map[string]string{"extended_l2": "on"}
	}
	if err := CreateFile(f, opt); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 20); err != nil {
		t.Fatal(err)
	}
	img, err := OpenFile(f, image.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	img.mu.Lock()
	defer img.mu.Unlock()
	tb, err := img.l2Table(0, true)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range es {
		img.setEntry(tb, int64(i), e[0], e[1])
	}
	return img
}

// wantRuns checks the runs LayerStatus gives from 0 to the end.
func wantRuns(t *testing.T, img *Image, want []image.Status) {
	t.Helper()
	off := int64(0)
	for i, w := range want {
		st, err := img.LayerStatus(off, img.Size()-off)
		if err != nil {
			t.Fatalf("run %d at %#x: %v", i, off, err)
		}
		if st.File != nil {
			st.File = img.f // compare the rest; File is the image's file or nil
		}
		if w.File != nil {
			w.File = img.f
		}
		if st != w {
			t.Errorf("run %d at %#x: got %+v, want %+v", i, off, st, w)
		}
		off += st.Len
	}
	if off != img.Size() {
		t.Errorf("runs end at %#x, not %#x", off, img.Size())
	}
}

// TestLayerStatusCrafted: each kind of L2 entry maps as qemu's
// qcow2_co_block_status says: contiguous data clusters are one run, each
// compressed cluster its own, zero clusters with and without storage,
// and unallocated clusters read as zeroes without a backing file.
func TestLayerStatusCrafted(t *testing.T) {
	const cs = 64 << 10
	img := craftedImage(t, false,
		[2]uint64{0x80000 | flagCopied}, [2]uint64{0x90000 | flagCopied}, // data, contiguous
		[2]uint64{flagCompressed | 0xa0000}, [2]uint64{flagCompressed | 0xa0200}, // compressed, one by one
		[2]uint64{flagZero},                                                       // zero, no storage
		[2]uint64{flagZero | 0xb0000 | flagCopied}, [2]uint64{flagZero | 0xc0000}, // zero, storage kept, contiguous
		[2]uint64{flagZero | 0xe0000}, // zero, storage not contiguous
		[2]uint64{0xd0000 | flagCopied},
	)
	f := img.f
	wantRuns(t, img, []image.Status{
		{Len: 2 * cs, Allocated: true, Data: true, File: f, Offset: 0x80000},
		{Len: cs, Allocated: true, Data: true, Compressed: true},
		{Len: cs, Allocated: true, Data: true, Compressed: true},
		{Len: cs, Allocated: true, Zero: true},
		{Len: 2 * cs, Allocated: true, Zero: true, File: f, Offset: 0xb0000},
		{Len: cs, Allocated: true, Zero: true, File: f, Offset: 0xe0000},
		{Len: cs, Allocated: true, Data: true, File: f, Offset: 0xd0000},
		{Len: 7 * cs, Zero: true},
	})
	// Asked from inside a cluster, the offset is of that byte.
	st, err := img.LayerStatus(cs+100, 50)
	if err != nil || st.Len != 50 || st.Offset != 0x90000+100 {
		t.Errorf("status inside a data cluster: %+v, %v", st, err)
	}
}

// TestLayerStatusExtendedL2: subclusters of one cluster split its runs;
// unallocated subclusters of an allocated cluster keep their host offset
// (qemu's UNALLOCATED_ALLOC), and a bitmap that contradicts its entry is
// refused.
func TestLayerStatusExtendedL2(t *testing.T) {
	const cs, sc = 64 << 10, 2 << 10
	img := craftedImage(t, true,
		[2]uint64{0x80000 | flagCopied, 1<<0 | 1<<(32+1)}, // sub 0 data, sub 1 zero, the rest unallocated
		[2]uint64{0, 0xffffffff << 32},                    // all zero, no storage
		[2]uint64{0x90000 | flagCopied, 0xffffffff},       // all data
	)
	f := img.f
	wantRuns(t, img, []image.Status{
		{Len: sc, Allocated: true, Data: true, File: f, Offset: 0x80000},
		{Len: sc, Allocated: true, Zero: true, File: f, Offset: 0x80000 + sc},
		{Len: cs - 2*sc, Zero: true, File: f, Offset: 0x80000 + 2*sc},
		{Len: cs, Allocated: true, Zero: true},
		{Len: cs, Allocated: true, Data: true, File: f, Offset: 0x90000},
		{Len: 13 * cs, Zero: true},
	})

	for _, bad := range [][2]uint64{
		{0, 1},                          // allocated subcluster, no host cluster
		{0x80000, 1 | 1<<32},            // allocated and zero
		{0x80200 | flagCopied, 1 << 32}, // unaligned host cluster
	} {
		img := craftedImage(t, true, bad)
		if st, err := img.LayerStatus(0, cs); err == nil {
			t.Errorf("entry %#x bitmap %#x: %+v, want an error", bad[0], bad[1], st)
		}
	}
}
