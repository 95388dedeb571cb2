package daemon

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"vdisk/internal/api"
)

// FuzzDecodeRequest feeds arbitrary bytes to the decoding the control
// socket's server applies to a request body (decodeBody), as each kind of
// request the API takes: it must never panic, and what decodes must come
// back the same after encoding and decoding again.
func FuzzDecodeRequest(f *testing.F) {
	for _, v := range []any{
		api.OpenRequest{File: "/var/lib/img/a.qcow2", Create: true, Size: 1 << 30, Format: "qcow2",
			Via: api.ViaNBD, Reuse: true, Passphrase: []byte("secret"), AllowDiscards: true,
			BackingDirs: []string{"/srv/base"}, NoBacking: true},
		api.OpenRequest{File: "s3://bucket/disk", S3: &api.S3Options{Endpoint: "http://127.0.0.1:7070",
			Region: "us-east-1", CacheDir: "/var/cache/vdisk", ChunkSize: 4 << 20, LeaseTTL: 30 * time.Second,
			ForceTakeover: true}},
		api.InspectRequest{File: "/img.vmdk", Format: "vmdk", BackingDirs: []string{"/a", "/b"}},
		api.ResizeRequest{Size: 8 << 30},
	} {
		b, err := json.Marshal(v)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{"", " ", "{}", "null", "[]", `{"file":1}`, `{"size":-1}`, `{"passphrase":"!!"}`,
		`{"file":"a"} {"file":"b"}`, `{"s3":{"lease_ttl":1e400}}`, "{\"file\":\"\\ud800\"}"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		roundTrip[api.OpenRequest](t, b)
		roundTrip[api.InspectRequest](t, b)
		roundTrip[api.ResizeRequest](t, b)
	})
}

// roundTrip decodes b as a T; when that succeeds, the value must encode,
// and decode again to a value that encodes the same.
func roundTrip[T any](t *testing.T, b []byte) {
	var v T
	if decodeBody(b, &v) != nil {
		return
	}
	e1, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("%T decoded from %q does not encode: %v", v, b, err)
	}
	var w T
	if err := decodeBody(e1, &w); err != nil {
		t.Fatalf("%T: its own encoding %s does not decode: %v", v, e1, err)
	}
	e2, err := json.Marshal(w)
	if err != nil || !bytes.Equal(e1, e2) {
		t.Fatalf("%T changed in a round trip: %s, then %s (%v)", v, e1, e2, err)
	}
}

// recordingReader hands out its body a few bytes per Read and keeps every
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

func (r *recordingReader) Close() error { return nil }

// TestDecodeWipesBody checks that no buffer the server read a request
// body into still holds any of it once the body is decoded: the body of
// an open request may carry a passphrase. The body is long enough that
// the buffer grows several times.
func TestDecodeWipesBody(t *testing.T) {
	pass := []byte(strings.Repeat("correct horse battery staple ", 100))
	body, err := json.Marshal(api.OpenRequest{File: "/x.img", Passphrase: pass})
	if err != nil {
		t.Fatal(err)
	}
	rr := &recordingReader{rest: body}
	req := httptest.NewRequest("POST", api.PathDisks, nil)
	req.Body = rr
	var got api.OpenRequest
	if !decode(httptest.NewRecorder(), req, &got) {
		t.Fatal("decode failed")
	}
	if !bytes.Equal(got.Passphrase, pass) {
		t.Fatalf("passphrase decoded as %q", got.Passphrase)
	}
	if len(rr.bufs) < 3 {
		t.Fatalf("the body was read in %d calls; the test wants a growing buffer", len(rr.bufs))
	}
	for i, b := range rr.bufs {
		if !bytes.Equal(b, make([]byte, len(b))) {
			t.Fatalf("read buffer %d (%d bytes) still holds body bytes after decode", i, len(b))
		}
	}
}
