package chunked

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/storage/objstore"
)

func TestManifest(t *testing.T) {
	tests := []struct {
		name string
		in   string
		ok   bool
	}{
		{"good", `{"format":"vdisk-chunked","version":1,"size":1048576,"chunk_size":65536,"created":"2026-01-01T00:00:00Z"}`, true},
		{"other format", `{"format":"qcow2","version":1,"size":1048576,"chunk_size":65536}`, false},
		{"future version", `{"format":"vdisk-chunked","version":3,"size":1048576,"chunk_size":65536}`, false},
		{"zero size", `{"format":"vdisk-chunked","version":1,"size":0,"chunk_size":65536}`, false},
		{"huge size", `{"format":"vdisk-chunked","version":1,"size":9223372036854775807,"chunk_size":65536}`, false},
		{"odd chunk", `{"format":"vdisk-chunked","version":1,"size":1048576,"chunk_size":65537}`, false},
		{"tiny chunk", `{"format":"vdisk-chunked","version":1,"size":1048576,"chunk_size":512}`, false},
		{"qcow2 file", `{"format":"vdisk-chunked","version":1,"size":1048576,"chunk_size":65536,"image_format":"qcow2","length":327680}`, true},
		{"length past capacity", `{"format":"vdisk-chunked","version":1,"size":1048576,"chunk_size":65536,"image_format":"qcow2","length":1048577}`, false},
		{"negative length", `{"format":"vdisk-chunked","version":1,"size":1048576,"chunk_size":65536,"image_format":"qcow2","length":-1}`, false},
		{"length of a raw image", `{"format":"vdisk-chunked","version":1,"size":1048576,"chunk_size":65536,"length":4096}`, false},
		{"odd image format", `{"format":"vdisk-chunked","version":1,"size":1048576,"chunk_size":65536,"image_format":"../qcow2"}`, false},
		{"too many chunks", `{"format":"vdisk-chunked","version":1,"size":1125899906842624,"chunk_size":4096}`, false},
		{"most chunks", `{"format":"vdisk-chunked","version":1,"size":274877906944,"chunk_size":4096}`, true},
		{"not json", `size=1`, false},
		{"fenced", `{"format":"vdisk-chunked","version":2,"size":1048576,"chunk_size":65536,"epoch":7,"committed":12,"sealed":[{"epoch":2,"seq":5},{"epoch":6,"seq":1}]}`, true},
		{"epoch in version 1", `{"format":"vdisk-chunked","version":1,"size":1048576,"chunk_size":65536,"epoch":7}`, false},
		{"sealed out of order", `{"format":"vdisk-chunked","version":2,"size":1048576,"chunk_size":65536,"epoch":7,"sealed":[{"epoch":6,"seq":5},{"epoch":2,"seq":1}]}`, false},
		{"sealed current epoch", `{"format":"vdisk-chunked","version":2,"size":1048576,"chunk_size":65536,"epoch":7,"sealed":[{"epoch":7,"seq":5}]}`, false},
		{"sealed nothing", `{"format":"vdisk-chunked","version":2,"size":1048576,"chunk_size":65536,"epoch":7,"sealed":[{"epoch":3,"seq":0}]}`, false},
		{"too big", `{"format":"` + strings.Repeat("x", maxManifestBytes) + `"}`, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseManifest([]byte(tc.in))
			if tc.ok != (err == nil) || (err != nil && !errors.Is(err, blockdev.ErrCorrupt)) {
				t.Fatalf("parseManifest: %v, want ok=%v or ErrCorrupt", err, tc.ok)
			}
		})
	}
}

func TestCreateAndStat(t *testing.T) {
	ctx := context.Background()
	st := objstore.NewMem()
	m, err := Create(ctx, st, "/a/b/", 10<<20, CreateOptions{})
	if err != nil || m.ChunkSize != DefaultChunkSize {
		t.Fatalf("Create: %+v, %v", m, err)
	}
	if _, err := Create(ctx, st, "a/b", 1<<20, CreateOptions{}); !errors.Is(err, ErrExists) {
		t.Fatalf("second Create: %v, want ErrExists", err)
	}
	got, err := Stat(ctx, st, "a/b")
	if err != nil || got != m {
		t.Fatalf("Stat = %+v, %v; want %+v", got, err, m)
	}
	if _, err := Stat(ctx, st, "nothing"); !errors.Is(err, ErrNoImage) {
		t.Fatalf("Stat of nothing: %v, want ErrNoImage", err)
	}
	if _, err := Open(ctx, st, "nothing", Options{}); !errors.Is(err, ErrNoImage) {
		t.Fatalf("Open of nothing: %v, want ErrNoImage", err)
	}
	for _, bad := range []CreateOptions{{ChunkSize: 1000}, {ChunkSize: 1 << 30}} {
		if _, err := Create(ctx, st, "bad", 1<<20, bad); !errors.Is(err, ErrBadOptions) {
			t.Fatalf("Create with %+v: %v, want ErrBadOptions", bad, err)
		}
	}
	if _, err := Create(ctx, st, "bad", -1, CreateOptions{}); !errors.Is(err, ErrBadOptions) {
		t.Fatalf("Create with a negative size: %v, want ErrBadOptions", err)
	}
	// A corrupt manifest is refused by Open with ErrCorrupt.
	if _, err := st.Put(ctx, "corrupt/manifest.json", []byte(`{"format":"vdisk-chunked","version":1,"size":5,"chunk_size":3}`), objstore.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, st, "corrupt", Options{}); !errors.Is(err, blockdev.ErrCorrupt) {
		t.Fatalf("Open of a corrupt manifest: %v, want ErrCorrupt", err)
	}
}

// TestCorruptChunk proves a chunk object of the wrong size reads as an
// error, not as wrong data.
func TestCorruptChunk(t *testing.T) {
	ctx := context.Background()
	st := objstore.NewMem()
	if _, err := Create(ctx, st, "c", 4*testChunk, CreateOptions{ChunkSize: testChunk}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Put(ctx, chunkKey("c/", 2), []byte("short"), objstore.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	// A key that is not a chunk, and one past the end, are ignored.
	for _, k := range []string{"c/notachunk", chunkKey("c/", 99)} {
		if _, err := st.Put(ctx, k, []byte("x"), objstore.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	o := testOpts()
	o.ReadOnly = true
	d := open(t, st, "c", o)
	if _, err := d.ReadAt(make([]byte, 10), 2*testChunk); !errors.Is(err, blockdev.ErrCorrupt) {
		t.Fatalf("read of a short chunk object: %v, want ErrCorrupt", err)
	}
	if _, err := d.ReadAt(make([]byte, 10), 3*testChunk); err != nil {
		t.Fatalf("read of a missing chunk: %v", err)
	}
}

func TestParseChunkKey(t *testing.T) {
	tests := []struct {
		key string
		idx int64
		ok  bool
	}{
		{"p/0000000000000000", 0, true},
		{"p/00000000000000ff", 255, true},
		{"p/00000000000000FF", 0, false},
		{"p/manifest.json", 0, false},
		{"p/000000000000000", 0, false},
		{"q/0000000000000001", 0, false},
		{"p/ffffffffffffffff", 0, false},
	}
	for _, tc := range tests {
		idx, ok := parseChunkKey("p/", tc.key)
		if ok != tc.ok || idx != tc.idx {
			t.Errorf("parseChunkKey(%q) = %d, %v; want %d, %v", tc.key, idx, ok, tc.idx, tc.ok)
		}
	}
}

// seeds adds the files of testdata matching glob to f's corpus.
func seeds(f *testing.F, glob string) {
	names, err := filepath.Glob(filepath.Join("testdata", glob))
	if err != nil || len(names) == 0 {
		f.Fatalf("no seeds testdata/%s (%v)", glob, err)
	}
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

func FuzzParseManifest(f *testing.F) {
	seeds(f, "manifest-*.json")
	f.Add([]byte(`{"format":"vdisk-chunked","version":1,"size":1048576,"chunk_size":65536,"created":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"format":"vdisk-chunked","version":1,"size":-1,"chunk_size":0}`))
	f.Add([]byte(`{"format":"vdisk-chunked","version":1,"size":1048576,"chunk_size":65536,"image_format":"qcow2","length":327680}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseManifest(b)
		if err != nil {
			if !errors.Is(err, blockdev.ErrCorrupt) {
				t.Fatalf("error %v is not ErrCorrupt", err)
			}
			return
		}
		if m.validate() != nil {
			t.Fatalf("parseManifest accepted an invalid manifest %+v", m)
		}
	})
}

func FuzzParseLease(f *testing.F) {
	seeds(f, "lease.json")
	f.Add([]byte(`{"holder":"h:1","acquired":"2026-01-01T00:00:00Z","expires":"2026-01-01T00:00:30Z","released":false}`))
	f.Add([]byte(`{"expires":"not a time"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := parseLease(b); err != nil && !errors.Is(err, blockdev.ErrCorrupt) {
			t.Fatalf("error %v is not ErrCorrupt", err)
		}
	})
}

func FuzzParseChunkKey(f *testing.F) {
	f.Add("p/", "p/0000000000000001")
	f.Add("", "00000000000000zz")
	f.Add("p/", "p/0000000000000001-0000000000000002-0000000000000003")
	f.Add("p/", "p/0000000000000001-0000000000000000-0000000000000003")
	f.Fuzz(func(t *testing.T, kp, key string) {
		idx, ok := parseChunkKey(kp, key)
		if ok && (idx < 0 || chunkKey(kp, idx) != key) {
			t.Fatalf("parseChunkKey(%q, %q) = %d: does not round-trip", kp, key, idx)
		}
		idx, v, ok := parseObjKey(kp, key)
		if ok && (idx < 0 || objKey(kp, idx, v) != key) {
			t.Fatalf("parseObjKey(%q, %q) = %d, %+v: does not round-trip", kp, key, idx, v)
		}
	})
}
