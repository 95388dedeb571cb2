package chunked

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/blockdev/blockdevtest"
	"vdisk/internal/storage/objstore"
)

func TestConformanceCacheDir(t *testing.T) {
	st := objstore.NewMem()
	dir := t.TempDir()
	blockdevtest.Run(t, func(t *testing.T, size int64) blockdev.Device {
		o := testOpts()
		o.CacheDir = dir
		return create(t, st, newPrefix(t), size, o)
	})
}

func cacheFiles(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, de os.DirEntry, err error) error {
		if err == nil && !de.IsDir() {
			out = append(out, filepath.Base(p))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestCacheDir proves a reopened image reads stored chunks from the cache
// directory without GETs, that entries a later writer made stale are not
// used, and that the directory stays within its size.
func TestCacheDir(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) { testCacheDir(t, objstore.NewCounter(b.store(t))) })
	}
}

func testCacheDir(t *testing.T, c *objstore.Counter) {
	p := newPrefix(t)
	dir := t.TempDir()
	const size = 8 * testChunk
	o := testOpts()
	o.CacheDir = dir
	d := create(t, c, p, size, o)
	model := pattern(size, 4)
	mustWrite(t, d, model, 0)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(cacheFiles(t, dir)); n != 8 {
		t.Fatalf("cache directory holds %d files after storing 8 chunks", n)
	}

	d = open(t, c, p, o)
	before := c.Counts()
	if got := readAll(t, d); !bytes.Equal(got, model) {
		t.Fatalf("read through the cache directory differs at %d", firstDiff(got, model))
	}
	if delta := c.Counts().Sub(before); delta.Get != 0 {
		t.Fatalf("reading a cached image made %d GETs, want 0", delta.Get)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}

	// Another writer, without the cache, changes chunk 3 and trims chunk 5.
	w := open(t, c, p, testOpts())
	fresh := pattern(testChunk, 9)
	mustWrite(t, w, fresh, 3*testChunk)
	copy(model[3*testChunk:], fresh)
	if err := w.Trim(5*testChunk, testChunk); err != nil {
		t.Fatal(err)
	}
	clear(model[5*testChunk : 6*testChunk])
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	o.CacheDirSize = 4 * testChunk
	d = open(t, c, p, o)
	if n := len(cacheFiles(t, dir)); n > 4 {
		t.Fatalf("cache directory holds %d files, over its size of 4 chunks", n)
	}
	before = c.Counts()
	if got := readAll(t, d); !bytes.Equal(got, model) {
		t.Fatalf("read after another writer differs at %d: a stale cache entry was used", firstDiff(got, model))
	}
	if delta := c.Counts().Sub(before); delta.Get == 0 {
		t.Fatal("no GETs for chunks the cache could not have")
	}
	if n := len(cacheFiles(t, dir)); n > 4 {
		t.Fatalf("cache directory holds %d files, over its size of 4 chunks", n)
	}
}

func TestParseCacheName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"0000000000000003.0123456789abcdef", true},
		{"0000000000000003", false},
		{"tmp-123", false},
		{"000000000000000g.0123456789abcdef", false},
		{"0000000000000003.0123", false},
	}
	for _, tc := range tests {
		if _, _, ok := parseCacheName(tc.name); ok != tc.ok {
			t.Errorf("parseCacheName(%q) ok = %v, want %v", tc.name, ok, tc.ok)
		}
	}
}
