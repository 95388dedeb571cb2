package cli

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

// recordingReader hands out its data a few bytes per Read and keeps every
// buffer it was asked to fill.
type recordingReader struct {
	rest []byte
	bufs [][]byte
}

func (r *recordingReader) Read(p []byte) (int, error) {
	if len(r.rest) == 0 {
		return 0, io.EOF
	}
	r.bufs = append(r.bufs, p)
	n := copy(p[:min(len(p), 7)], r.rest)
	r.rest = r.rest[n:]
	return n, nil
}

// TestReadKeyWipes checks that readKey leaves no copy of a key file in the
// buffers it outgrew: only the slice it returns (which the caller clears)
// holds the key.
func TestReadKeyWipes(t *testing.T) {
	key := []byte(strings.Repeat("correct horse battery staple ", 100))
	rr := &recordingReader{rest: bytes.Clone(key)}
	got, err := readKey(rr, "test")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, key) {
		t.Fatalf("read %q", got)
	}
	clear(got)
	if len(rr.bufs) < 3 {
		t.Fatalf("the key was read in %d calls; the test wants a growing buffer", len(rr.bufs))
	}
	for i, b := range rr.bufs {
		if !bytes.Equal(b, make([]byte, len(b))) {
			t.Fatalf("read buffer %d (%d bytes) still holds key bytes", i, len(b))
		}
	}
}
