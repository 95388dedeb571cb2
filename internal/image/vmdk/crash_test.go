package vmdk

import (
	"bytes"
	"path/filepath"
	"testing"
	"vdisk/internal/image/imagetest"

	"vdisk/internal/image"
)

// TestUnflushedAllocation loses everything after the last Flush, as a
// crash would (the files are released without the final Flush, so the
// grain tables and directory entries of new grains never reach them):
// qemu-img check finds the image consistent, the flushed data survives,
// and the lost grain reads as zeroes.
func TestUnflushedAllocation(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	for _, sub := range []string{MonolithicSparse, TwoGbMaxExtentSparse} {
		t.Run(sub, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "img.vmdk")
			if err := createPath(p, image.CreateOptions{Format: Name, Size: 8 << 20, Options: map[string]string{"subformat": sub}}); err != nil {
				t.Fatal(err)
			}
			d, err := openPath(p, image.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			kept := bytes.Repeat([]byte("kept"), 1024)
			if _, err := d.WriteAt(kept, 1<<20); err != nil {
				t.Fatal(err)
			}
			if err := d.Flush(); err != nil {
				t.Fatal(err)
			}
			if _, err := d.WriteAt([]byte("lost"), 5<<20); err != nil {
				t.Fatal(err)
			}
			d.release() // the crash: no Flush
			d.f.Close()
			imagetest.Run(t, "qemu-img", "check", p)
			ref := make([]byte, 8<<20)
			copy(ref[1<<20:], kept)
			imagetest.MustEqual(t, "qemu after the crash", imagetest.QemuRaw(t, p, "vmdk"), ref)
			d2, err := openPath(p, image.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			imagetest.MustEqual(t, "vdisk after the crash", imagetest.ReadAll(t, d2), ref)
			if _, err := d2.WriteAt([]byte("again"), 6<<20); err != nil {
				t.Fatal(err)
			}
			copy(ref[6<<20:], "again")
			if err := d2.Close(); err != nil {
				t.Fatal(err)
			}
			imagetest.Run(t, "qemu-img", "check", p)
			imagetest.MustEqual(t, "qemu after more writes", imagetest.QemuRaw(t, p, "vmdk"), ref)
		})
	}
}
