package vdi

import (
	"path/filepath"
	"testing"

	"vdisk/internal/image"
	"vdisk/internal/image/imagetest"
)

// TestExtentsSeeFileHoles checks that a static image, whose blocks are all
// allocated in a sparse file, reports the file's holes as zeroes, and a
// dynamic one its unallocated blocks, with data only where written.
func TestExtentsSeeFileHoles(t *testing.T) {
	for _, static := range []string{"on", "off"} {
		t.Run("static="+static, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "img.vdi")
			if err := image.Create(p, image.CreateOptions{Format: Name, Size: 4 << 20, Options: map[string]string{"static": static}}); err != nil {
				t.Fatal(err)
			}
			d, err := image.Open(p, image.OpenOptions{Format: Name})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			imagetest.CheckHoleExtents(t, d)
		})
	}
}
