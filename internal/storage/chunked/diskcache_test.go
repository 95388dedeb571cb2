package chunked

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
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
		{"0000000000000003.0123456789abcdef.p", true},
		{"0000000000000003.0123456789abcdef.m", true},
		{"0000000000000003.0123456789abcdef.x", false},
		{"0000000000000003.0123456789abcdef.p.m", false},
	}
	for _, tc := range tests {
		if _, _, _, ok := parseCacheName(tc.name); ok != tc.ok {
			t.Errorf("parseCacheName(%q) ok = %v, want %v", tc.name, ok, tc.ok)
		}
	}
}

// TestCacheDirPages proves random reads keep the pages they fetched in
// the cache directory, that a reopened image reads them from there
// without GETs, and that a page whose bytes were damaged is fetched again
// rather than used.
func TestCacheDirPages(t *testing.T) {
	c := objstore.NewCounter(objstore.NewMem())
	p := newPrefix(t)
	dir := t.TempDir()
	const size = 4 * testChunk
	w := create(t, c, p, size, testOpts())
	model := pattern(size, 5)
	mustWrite(t, w, model, 0)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	o := testOpts()
	o.ReadOnly = true
	o.ReadAhead = -1
	o.CacheDir = dir
	offs := []int64{testChunk + 8192, testChunk + 4096*5 + 100, 3*testChunk + 4096}
	read := func(d *Device) {
		t.Helper()
		for _, off := range offs {
			buf := make([]byte, 2048)
			if _, err := d.ReadAt(buf, off); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf, model[off:off+2048]) {
				t.Fatalf("read at %d: wrong data", off)
			}
		}
	}
	d := open(t, c, p, o)
	read(d)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	files := cacheFiles(t, dir)
	if len(files) != 4 { // a map and a page file for chunks 1 and 3
		t.Fatalf("cache directory holds %v, want partial entries of 2 chunks", files)
	}
	d = open(t, c, p, o)
	before := c.Counts()
	read(d)
	if delta := c.Counts().Sub(before); delta.Get != 0 {
		t.Fatalf("reads of cached pages after a reopen made %d GETs", delta.Get)
	}
	d.Close()

	// A page file without its map (or the other way round) is removed.
	orphan := ""
	for _, path := range cacheFilePaths(t, dir) {
		if strings.HasPrefix(filepath.Base(path), "0000000000000003.") && strings.HasSuffix(path, ".m") {
			orphan = strings.TrimSuffix(path, ".m") + ".p"
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		}
	}
	if orphan == "" {
		t.Fatal("no map of chunk 3's pages")
	}
	d = open(t, c, p, o)
	d.Close()
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Fatalf("a page file without its map was kept: %v", err)
	}

	// Damage chunk 1's cached pages: they are fetched again, right.
	var damaged int
	err := filepath.WalkDir(dir, func(path string, de os.DirEntry, err error) error {
		if err != nil || de.IsDir() || !strings.HasPrefix(de.Name(), "0000000000000001.") || !strings.HasSuffix(de.Name(), ".p") {
			return err
		}
		damaged++
		return os.WriteFile(path, bytes.Repeat([]byte{0xee}, 2*testChunk), 0o600)
	})
	if err != nil || damaged != 1 {
		t.Fatalf("damaging the cache: %v (%d files)", err, damaged)
	}
	d = open(t, c, p, o)
	before = c.Counts()
	read(d)
	if delta := c.Counts().Sub(before); delta.Get != 3 {
		t.Fatalf("reads of 2 damaged cached pages and one dropped made %d GETs, want 3", delta.Get)
	}
}

func cacheFilePaths(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, de os.DirEntry, err error) error {
		if err == nil && !de.IsDir() {
			out = append(out, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
