package qcow2

import (
	"os"
	"path/filepath"
	"testing"

	"vdisk/internal/image"
	"vdisk/internal/image/imagetest"
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

// FuzzOpen opens arbitrary bytes as an image in memory, describes,
// checks and reads it. It can name no other file.
func FuzzOpen(f *testing.F) {
	seeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		mf := imagetest.NewMemFile("fuzz.qcow2", b)
		mf.SetMax(int64(len(b)) + 64<<20)
		InfoFile(mf)
		CheckFile(mf, image.CheckOptions{})
		img, err := OpenFile(mf, image.OpenOptions{ReadOnly: true, Names: image.NoNames{Why: "fuzzing"}})
		if err != nil {
			return
		}
		defer img.Close()
		buf := make([]byte, 64<<10)
		for _, off := range []int64{0, img.Size() / 2, img.Size() - int64(len(buf))} {
			if off >= 0 && off+int64(len(buf)) <= img.Size() {
				img.ReadAt(buf, off)
				img.Extents(off, int64(len(buf)))
				imagetest.CheckMap(t, img, off, int64(len(buf)))
			}
		}
	})
}

// TestFixtures reads every fixture and compares it with qemu-img.
func TestFixtures(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	names, _ := filepath.Glob("testdata/*.qcow2")
	for _, n := range names {
		t.Run(filepath.Base(n), func(t *testing.T) {
			img := openImage(t, n, image.OpenOptions{ReadOnly: true})
			imagetest.MustEqual(t, "read", imagetest.ReadAll(t, img), qemuRaw(t, n))
			res, err := checkPath(n, image.CheckOptions{})
			if err != nil || !res.Clean() {
				t.Fatalf("check: %+v %v", res, err)
			}
		})
	}
}
