package vmdk

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
	"vdisk/internal/image/imagetest"
)

// fuzzReadLimit bounds how much of an opened image FuzzOpen reads.
const fuzzReadLimit = 1 << 20

// FuzzOpen opens arbitrary bytes, in memory, as a monolithic sparse VMDK
// (or a descriptor next to a 1 MiB flat extent "f.raw"): never a panic, hang or
// unbounded allocation; what opens reads and describes its extents, or
// fails with an error.
func FuzzOpen(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*.vmdk")
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add(smallImage(f))
	f.Fuzz(func(t *testing.T, b []byte) {
		names := imagetest.NewMemNames(imagetest.NewMemFile("f.raw", make([]byte, 1<<20)))
		image.InfoOf(imagetest.NewMemFile("f.vmdk", bytes.Clone(b)), Name)
		d, err := image.OpenFile(imagetest.NewMemFile("f.vmdk", b), image.OpenOptions{Format: Name, ReadOnly: true, NoBacking: true, Names: names})
		if err != nil {
			return
		}
		defer d.Close()
		n := min(d.Size(), fuzzReadLimit)
		d.ReadAt(make([]byte, n), 0)
		blockdev.Extents(d, 0, d.Size())
		imagetest.CheckMap(t, d, 0, n)
	})
}

// FuzzDescriptor parses arbitrary descriptor text: never a panic, and a
// parsed descriptor encodes to text that parses to the same extents.
func FuzzDescriptor(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*.txt")
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	f.Fuzz(func(t *testing.T, text string) {
		d, err := parseDescriptor(text)
		if err != nil {
			return
		}
		d2, err := parseDescriptor(d.encode())
		if err != nil {
			t.Fatalf("re-parse of an encoded descriptor: %v\n%s", err, d.encode())
		}
		if len(d2.extents) != len(d.extents) {
			t.Fatalf("%d extents after a round trip, %d before", len(d2.extents), len(d.extents))
		}
		for i := range d.extents {
			if d.extents[i] != d2.extents[i] {
				t.Fatalf("extent %d: %+v after a round trip, %+v before", i, d2.extents[i], d.extents[i])
			}
		}
	})
}
