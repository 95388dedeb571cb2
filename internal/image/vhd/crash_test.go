package vhd

import (
	"bytes"
	"path/filepath"
	"testing"
	"vdisk/internal/image/imagetest"

	"vdisk/internal/image"
)

// TestUnflushedAllocation loses everything after the last Flush, as a
// crash would (the file is released without the final Flush, so the BAT
// entries, bitmaps and footer of new blocks never reach it): the image
// stays consistent, the flushed data survives, and the lost block reads as
// zeroes.
func TestUnflushedAllocation(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	p := filepath.Join(t.TempDir(), "img.vhd")
	if err := image.Create(p, image.CreateOptions{Format: Name, Size: 8 << 20, ClusterSize: 1 << 20, Options: map[string]string{"force_size": "on"}}); err != nil {
		t.Fatal(err)
	}
	d := openImage(t, p, image.OpenOptions{})
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
	d.File().Close() // the crash: no Flush
	ref := make([]byte, 8<<20)
	copy(ref[1<<20:], kept)
	imagetest.MustEqual(t, "qemu after the crash", imagetest.QemuRaw(t, p, "vpc"), ref)
	d2, err := image.Open(p, image.OpenOptions{})
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
	imagetest.MustEqual(t, "qemu after more writes", imagetest.QemuRaw(t, p, "vpc"), ref)
	checkClean(t, p)
}

// openImage opens the VHD at p as an *Image.
func openImage(t testing.TB, p string, opt image.OpenOptions) *Image {
	t.Helper()
	d, err := image.Open(p, opt)
	if err != nil {
		t.Fatal(err)
	}
	img, ok := d.(*Image)
	if !ok {
		t.Fatalf("opened a %T", d)
	}
	return img
}
