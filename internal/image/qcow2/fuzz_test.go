package qcow2

import (
	"os"
	"path/filepath"
	"testing"

	"vdisk/internal/image"
)

// seeds adds every fixture in testdata to f.
func seeds(f *testing.F) {
	names, _ := filepath.Glob("testdata/*.qcow2")
	if len(names) == 0 {
		f.Fatal("no fixtures in testdata")
	}
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

// FuzzHeader parses arbitrary bytes as a header and snapshot table.
func FuzzHeader(f *testing.F) {
	seeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := parseHeader(b, int64(len(b)))
		if err != nil {
			return
		}
		if h.snapshotsOff < uint64(len(b)) {
			parseSnapshots(b[h.snapshotsOff:], h)
		}
	})
}

// FuzzOpen opens arbitrary bytes as an image, reads, describes and checks
// it. Backing files are confined to an empty directory.
func FuzzOpen(f *testing.F) {
	seeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		p := filepath.Join(dir, "img.qcow2")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		Info(p)
		Check(p, image.CheckOptions{})
		img, err := Open(p, image.OpenOptions{ReadOnly: true, BackingDir: dir})
		if err != nil {
			return
		}
		defer img.Close()
		buf := make([]byte, 64<<10)
		for _, off := range []int64{0, img.Size() / 2, img.Size() - int64(len(buf))} {
			if off >= 0 && off+int64(len(buf)) <= img.Size() {
				img.ReadAt(buf, off)
				img.Extents(off, int64(len(buf)))
			}
		}
	})
}

// TestFixtures reads every fixture and compares it with qemu-img.
func TestFixtures(t *testing.T) {
	needTool(t, "qemu-img")
	names, _ := filepath.Glob("testdata/*.qcow2")
	for _, n := range names {
		t.Run(filepath.Base(n), func(t *testing.T) {
			img := openImage(t, n, image.OpenOptions{ReadOnly: true})
			mustEqual(t, "read", readAll(t, img), qemuRaw(t, n))
			res, err := Check(n, image.CheckOptions{})
			if err != nil || !res.Clean() {
				t.Fatalf("check: %+v %v", res, err)
			}
		})
	}
}
