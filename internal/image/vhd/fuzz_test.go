package vhd

import (
	"os"
	"path/filepath"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// fuzzReadLimit bounds how much of an opened image FuzzOpen reads.
const fuzzReadLimit = 1 << 20

// FuzzOpen opens arbitrary bytes as a VHD: it must never panic, hang or
// allocate without bound, and what opens must read and describe its
// extents without error. Seeds: testdata/*.vhd and a small image made here.
func FuzzOpen(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*.vhd")
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add(smallImage(f))
	f.Fuzz(func(t *testing.T, b []byte) {
		image.InfoOf(memFile(t, b), Name)
		image.CheckOf(memFile(t, b), Name, image.CheckOptions{})
		d, err := image.OpenFile(memFile(t, b), image.OpenOptions{Format: Name, ReadOnly: true, NoBacking: true})
		if err != nil {
			return
		}
		defer d.Close()
		n := min(d.Size(), fuzzReadLimit)
		buf := make([]byte, n)
		if _, err := d.ReadAt(buf, 0); err != nil {
			t.Fatalf("read of an opened image: %v", err)
		}
		if _, err := d.ReadAt(buf[:min(n, 4096)], d.Size()-min(n, 4096)); err != nil {
			t.Fatalf("read of an opened image: %v", err)
		}
		if _, err := blockdev.Extents(d, 0, d.Size()); err != nil {
			t.Fatalf("extents of an opened image: %v", err)
		}
	})
}
