package chunked

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"vdisk/internal/storage/objstore"
)

// TestPartsWrite checks parts against a plain buffer over random writes:
// same bytes where written, and always sorted, disjoint and non-adjacent.
func TestPartsWrite(t *testing.T) {
	const n = 4096
	r := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		var ps parts
		ref := make([]byte, n)
		var written spans
		for w := range 1 + r.IntN(30) {
			off := r.Int64N(n)
			l := 1 + r.Int64N(min(n-off, 600))
			b := bytes.Repeat([]byte{byte(round*31 + w + 1)}, int(l))
			if r.IntN(3) == 0 && len(ps) > 0 {
				// Append right after a part, the growing-in-place case.
				p := ps[r.IntN(len(ps))]
				off = p.end()
				l = min(l, n-off)
				if l == 0 {
					continue
				}
				b = b[:l]
			}
			ps = ps.write(off, b, n, nil)
			copy(ref[off:], b)
			written = written.add(off, off+l)
		}
		for i, p := range ps {
			if i > 0 && ps[i-1].end() >= p.off {
				t.Fatalf("round %d: parts %d and %d overlap or touch: %d+%d, %d", round, i-1, i, ps[i-1].off, len(ps[i-1].data), p.off)
			}
			if !bytes.Equal(p.data, ref[p.off:p.end()]) {
				t.Fatalf("round %d: part at %d holds wrong bytes", round, p.off)
			}
			if !written.covers(p.off, p.end()) {
				t.Fatalf("round %d: part at %d+%d covers bytes never written", round, p.off, len(p.data))
			}
		}
		if len(ps) != len(written) {
			t.Fatalf("round %d: %d parts for %d written spans", round, len(ps), len(written))
		}
	}
}

// TestSmallWritesIntoStoredChunks: 4 KiB writes into many stored chunks
// cost memory for what they wrote, make no request until they are stored,
// read back right (from the parts alone, and over the stored data), and
// each chunk is stored with one GET and one PUT.
func TestSmallWritesIntoStoredChunks(t *testing.T) {
	c := objstore.NewCounter(objstore.NewMem())
	p := newPrefix(t)
	const nchunks = 32
	w := create(t, c, p, nchunks*testChunk, testOpts())
	base := pattern(nchunks*testChunk, 3)
	mustWrite(t, w, base, 0)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	o := testOpts()
	o.WriteBackDelay = 1 << 40 // only Flush and a full cache store
	d := open(t, c, p, o)
	before := c.Counts()
	want := bytes.Clone(base)
	small := pattern(4096, 9)
	for i := range int64(nchunks) {
		off := i*testChunk + (i%8)*4096
		mustWrite(t, d, small, off)
		copy(want[off:], small)
	}
	if st := d.Stats(); st.DirtyChunks != nchunks || st.DirtyBytes > 2*nchunks*4096 {
		t.Fatalf("%d 4 KiB writes: %+v, want %d dirty chunks of about 4 KiB each", nchunks, st, nchunks)
	}
	if delta := c.Counts().Sub(before); delta.Requests() != 0 {
		t.Fatalf("small writes into stored chunks made requests %+v", delta)
	}
	got := make([]byte, 4096)
	if _, err := d.ReadAt(got, 3*testChunk+3*4096); err != nil || !bytes.Equal(got, small) {
		t.Fatalf("read of a written part: %v", err)
	}
	got = make([]byte, 3*4096)
	off := int64(5*testChunk + 4*4096)
	if _, err := d.ReadAt(got, off); err != nil || !bytes.Equal(got, want[off:off+int64(len(got))]) {
		t.Fatalf("read over a part and the stored data: %v, wrong data %v", err, !bytes.Equal(got, want[off:off+int64(len(got))]))
	}
	before = c.Counts()
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	if delta := c.Counts().Sub(before); delta.Get != nchunks || delta.Put > nchunks+1 {
		t.Fatalf("flush of %d partly written chunks: %+v, want a GET and a PUT each", nchunks, delta)
	}
	got = make([]byte, len(want))
	if _, err := d.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read back after flush: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	r := open(t, c, p, Options{ReadOnly: true})
	if _, err := r.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read back after reopen: %v", err)
	}
}

// TestSmallWritesOverZeros: 4 KiB writes into chunks with no object, and
// into a stored chunk trimmed before, lie over zeros: small in memory, no
// GET, zeros around them.
func TestSmallWritesOverZeros(t *testing.T) {
	c := objstore.NewCounter(objstore.NewMem())
	p := newPrefix(t)
	const nchunks = 32
	o := testOpts()
	o.WriteBackDelay = 1 << 40
	d := create(t, c, p, nchunks*testChunk, o)
	want := make([]byte, nchunks*testChunk)
	mustWrite(t, d, pattern(testChunk, 4), 0) // chunk 0 stored, then trimmed
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := d.Trim(0, testChunk); err != nil {
		t.Fatal(err)
	}
	before := c.Counts()
	small := pattern(4096, 9)
	for i := range int64(nchunks) {
		off := i*testChunk + (i%8)*4096
		mustWrite(t, d, small, off)
		copy(want[off:], small)
	}
	if st := d.Stats(); st.DirtyChunks != nchunks || st.DirtyBytes > 2*nchunks*4096 {
		t.Fatalf("%d 4 KiB writes: %+v, want %d dirty chunks of about 4 KiB each", nchunks, st, nchunks)
	}
	got := make([]byte, len(want))
	if _, err := d.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read back before flush: %v", err)
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	if delta := c.Counts().Sub(before); delta.Get != 0 || delta.Put > nchunks+1 {
		t.Fatalf("small writes over zeros: %+v, want no GET and a PUT each", delta)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	r := open(t, c, p, Options{ReadOnly: true})
	if _, err := r.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read back after reopen: %v", err)
	}
}
