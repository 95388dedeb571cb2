package vhdx

import (
	"path/filepath"
	"testing"

	"vdisk/internal/image"
	"vdisk/internal/image/imagetest"
)

// TestExtentsSeeFileHoles checks that a fixed image, whose blocks are all
// allocated in a sparse file, reports the file's holes as zeroes, and a
// dynamic one its unallocated blocks, with data only where written.
func TestExtentsSeeFileHoles(t *testing.T) {
	for _, sub := range []string{"fixed", "dynamic"} {
		t.Run(sub, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "img.vhdx")
			if err := createPath(p, image.CreateOptions{Format: Name, Size: 4 << 20, Options: map[string]string{"subformat": sub}, ClusterSize: 1 << 20}); err != nil {
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
