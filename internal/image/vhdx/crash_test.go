package vhdx

import (
	"bytes"
	"path/filepath"
	"testing"
	"vdisk/internal/image/imagetest"

	"vdisk/internal/image"
)

// TestUnflushedAllocation loses everything after the last Flush, as a
// crash would (the file is released without the final Flush, so the BAT
// entries of new blocks never reach it): qemu-img check finds the image
// consistent, the flushed data survives, and the lost block reads as
// zeroes.
func TestUnflushedAllocation(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	p := filepath.Join(t.TempDir(), "img.vhdx")
	if err := createPath(p, image.CreateOptions{Format: Name, Size: 8 << 20, ClusterSize: mib}); err != nil {
		t.Fatal(err)
	}
	d, err := openPath(p, image.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kept := bytes.Repeat([]byte("kept"), 1024)
	if _, err := d.WriteAt(kept, mib); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt([]byte("lost"), 5*mib); err != nil {
		t.Fatal(err)
	}
	d.f.Close() // the crash: no Flush
	imagetest.Run(t, "qemu-img", "check", p)
	ref := make([]byte, 8<<20)
	copy(ref[mib:], kept)
	imagetest.MustEqual(t, "qemu after the crash", imagetest.QemuRaw(t, p, "vhdx"), ref)
	d2, err := openPath(p, image.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	imagetest.MustEqual(t, "vdisk after the crash", imagetest.ReadAll(t, d2), ref)
	if _, err := d2.WriteAt([]byte("again"), 6*mib); err != nil {
		t.Fatal(err)
	}
	copy(ref[6*mib:], "again")
	if err := d2.Close(); err != nil {
		t.Fatal(err)
	}
	imagetest.Run(t, "qemu-img", "check", p)
	imagetest.MustEqual(t, "qemu after more writes", imagetest.QemuRaw(t, p, "vhdx"), ref)
}
