package vmdk

import (
	"path/filepath"
	"testing"

	"vdisk/internal/image"
	"vdisk/internal/image/imagetest"
)

// TestExtentsSeeFileHoles checks that a flat image, whose extents are
// allocated in a sparse file, reports the file's holes as zeroes, and a
// dynamic one its unallocated blocks, with data only where written.
func TestExtentsSeeFileHoles(t *testing.T) {
	for _, sub := range []string{MonolithicFlat, TwoGbMaxExtentFlat, MonolithicSparse} {
		t.Run(sub, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "img.vmdk")
			if err := createPath(p, image.CreateOptions{Format: Name, Size: 4 << 20, Options: map[string]string{"subformat": sub}}); err != nil {
				t.Fatal(err)
			}
			d, err := openPath(p, image.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			imagetest.CheckHoleExtents(t, d)
		})
	}
}

// TestExtentsLongSparse asks for the extents of a sparse disk whose first
// extent has more grains than one call looks at: the answer is a prefix
// of the range, without gaps.
func TestExtentsLongSparse(t *testing.T) {
	p := filepath.Join(t.TempDir(), "long.vmdk")
	if err := createPath(p, image.CreateOptions{Format: Name, Size: 6 << 30, ClusterSize: 4096, Options: map[string]string{"subformat": TwoGbMaxExtentSparse}}); err != nil {
		t.Fatal(err)
	}
	d, err := openPath(p, image.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for g := int64(0); g < 50; g++ { // data and holes, then 6 GiB of holes
		if _, err := d.WriteAt([]byte{1}, g*8192); err != nil {
			t.Fatal(err)
		}
	}
	ext, err := d.Extents(0, d.Size())
	if err != nil || len(ext) < 2 {
		t.Fatal(ext, err)
	}
	next := int64(0)
	for _, e := range ext {
		if e.Off != next {
			t.Fatalf("extent at %d, want %d", e.Off, next)
		}
		next = e.Off + e.Len
	}
}
