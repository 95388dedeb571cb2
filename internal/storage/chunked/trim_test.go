package chunked

import (
	"bytes"
	"fmt"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/storage/objstore"
)

// TestTrimDeletes proves trimmed and zeroed chunks disappear from the
// store, a partial trim zeroes its range and keeps the chunk, and Extents
// reports what exists.
func TestTrimDeletes(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			st := b.store(t)
			p := newPrefix(t)
			const size = 8*testChunk + 4096 // a short last chunk
			d := create(t, st, p, size, testOpts())
			all := pattern(size, 3)
			mustWrite(t, d, all, 0)
			if err := d.Flush(); err != nil {
				t.Fatal(err)
			}
			if got := fmt.Sprint(chunkKeys(t, st, p)); got != "[0 1 2 3 4 5 6 7 8]" {
				t.Fatalf("chunks after writing everything: %s", got)
			}
			model := bytes.Clone(all)
			steps := []struct {
				name string
				do   func() error
				off  int64
				n    int64
			}{
				{"trim chunk 1", func() error { return d.Trim(testChunk, testChunk) }, testChunk, testChunk},
				{"write zeroes over chunks 3-4", func() error { return d.WriteZeroes(3*testChunk, 2*testChunk, false) }, 3 * testChunk, 2 * testChunk},
				{"write zero bytes over chunk 6", func() error { _, err := d.WriteAt(make([]byte, testChunk), 6*testChunk); return err }, 6 * testChunk, testChunk},
				{"trim the short last chunk", func() error { return d.Trim(8*testChunk, 4096) }, 8 * testChunk, 4096},
				{"partial trim of chunk 7", func() error { return d.Trim(7*testChunk+100, 5000) }, 7*testChunk + 100, 5000},
			}
			for _, s := range steps {
				if err := s.do(); err != nil {
					t.Fatalf("%s: %v", s.name, err)
				}
				clear(model[s.off : s.off+s.n])
			}
			if err := d.Flush(); err != nil {
				t.Fatal(err)
			}
			if got := fmt.Sprint(chunkKeys(t, st, p)); got != "[0 2 5 7]" {
				t.Fatalf("chunks left in the store: %s, want [0 2 5 7]", got)
			}
			ext, err := d.Extents(0, size)
			if err != nil {
				t.Fatal(err)
			}
			hz := blockdev.ExtentHole | blockdev.ExtentZero
			want := []blockdev.Extent{
				{Off: 0, Len: testChunk}, {Off: testChunk, Len: testChunk, Flags: hz},
				{Off: 2 * testChunk, Len: testChunk}, {Off: 3 * testChunk, Len: 2 * testChunk, Flags: hz},
				{Off: 5 * testChunk, Len: testChunk}, {Off: 6 * testChunk, Len: testChunk, Flags: hz},
				{Off: 7 * testChunk, Len: testChunk}, {Off: 8 * testChunk, Len: 4096, Flags: hz},
			}
			if fmt.Sprint(ext) != fmt.Sprint(want) {
				t.Fatalf("extents = %v\nwant %v", ext, want)
			}
			if got := readAll(t, d); !bytes.Equal(got, model) {
				t.Fatalf("contents differ from the model at %d", firstDiff(got, model))
			}
			// And from a fresh open, which lists the store.
			d.Close()
			d2 := open(t, st, p, testOpts())
			if got := readAll(t, d2); !bytes.Equal(got, model) {
				t.Fatalf("reopened contents differ from the model at %d", firstDiff(got, model))
			}
			ext2, _ := d2.Extents(0, size)
			if fmt.Sprint(ext2) != fmt.Sprint(want) {
				t.Fatalf("extents after reopen = %v\nwant %v", ext2, want)
			}
		})
	}
}

// TestZeroWritesOnEmptyImage proves zeroing a fresh image costs no
// requests (nothing stored, nothing to delete).
func TestZeroWritesOnEmptyImage(t *testing.T) {
	c := objstore.NewCounter(objstore.NewMem())
	d := create(t, c, newPrefix(t), 16*testChunk, testOpts())
	before := c.Counts()
	mustWrite(t, d, make([]byte, 16*testChunk), 0)
	if err := d.Trim(0, 16*testChunk); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	delta := c.Counts().Sub(before)
	if delta.Put > 1 || delta.Delete != 0 || delta.Get != 0 { // the one PUT renews the lease
		t.Fatalf("zeroing an empty image made requests %+v", delta)
	}
}

// TestRangedReads proves reads fetch only the bytes asked for, and
// sequential reads fetch whole chunks at once.
func TestRangedReads(t *testing.T) {
	c := objstore.NewCounter(objstore.NewMem())
	p := newPrefix(t)
	w := create(t, c, p, 16*testChunk, testOpts())
	mustWrite(t, w, pattern(16*testChunk, 1), 0)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	o := testOpts()
	o.ReadOnly = true
	o.ReadAhead = testChunk
	d := open(t, c, p, o)
	before := c.Counts()
	buf := make([]byte, 4096)
	if _, err := d.ReadAt(buf, 5*testChunk+8192); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, pattern(16*testChunk, 1)[5*testChunk+8192:][:4096]) {
		t.Fatal("random read returned wrong data")
	}
	if delta := c.Counts().Sub(before); delta.Get != 1 || delta.BytesRead != 4096 {
		t.Fatalf("a 4 KiB read cost %+v, want one GET of 4096 bytes", delta)
	}
	before = c.Counts()
	seq := make([]byte, testChunk/4)
	for off := int64(8 * testChunk); off < 12*testChunk; off += int64(len(seq)) {
		if _, err := d.ReadAt(seq, off); err != nil {
			t.Fatal(err)
		}
	}
	// 16 reads of a quarter chunk over 4 chunks: the read-ahead grows to a
	// chunk, so far fewer GETs than reads.
	if delta := c.Counts().Sub(before); delta.Get > 8 || delta.BytesRead > 4*testChunk+testChunk {
		t.Fatalf("sequential reads cost %+v, want at most 8 GETs", delta)
	}
}
