package imagetest

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"
)

// TestCOWFile: a COWFile reads like a MemFile given the same writes and
// truncates, and never changes its template.
func TestCOWFile(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	base := make([]byte, 5*cowPage+100)
	for i := range base {
		base[i] = byte(r.IntN(256))
	}
	orig := bytes.Clone(base)
	c := NewCOWFile("c", base)
	m := NewMemFile("m", base)
	for range 2000 {
		off := int64(r.IntN(8 * cowPage))
		switch r.IntN(3) {
		case 0:
			p := make([]byte, r.IntN(3*cowPage))
			for i := range p {
				p[i] = byte(r.IntN(256))
			}
			nc, errc := c.WriteAt(p, off)
			nm, errm := m.WriteAt(p, off)
			if nc != nm || (errc == nil) != (errm == nil) {
				t.Fatalf("write at %d: %d %v vs %d %v", off, nc, errc, nm, errm)
			}
		case 1:
			if r.IntN(10) == 0 {
				c.Truncate(off)
				m.Truncate(off)
			}
		}
		p := make([]byte, r.IntN(3*cowPage))
		q := make([]byte, len(p))
		nc, errc := c.ReadAt(p, off)
		nm, errm := m.ReadAt(q, off)
		if nc != nm || (errc == io.EOF) != (errm == io.EOF) || !bytes.Equal(p[:nc], q[:nm]) {
			t.Fatalf("read %d at %d: %d %v vs %d %v", len(p), off, nc, errc, nm, errm)
		}
	}
	if !bytes.Equal(base, orig) {
		t.Fatal("the template changed")
	}
}
