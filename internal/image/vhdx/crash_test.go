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

// TestUnflushedDifferencing crashes a differencing disk twice: before the
// Flush that would record its first block and the chunk's new sector
// bitmap block, and after a Flush, with a later block lost. Each time
// Check finds it consistent and it reads as the parent with the flushed
// writes (qemu does not open differencing VHDX).
func TestUnflushedDifferencing(t *testing.T) {
	dir := t.TempDir()
	parent, child := filepath.Join(dir, "parent.vhdx"), filepath.Join(dir, "child.vhdx")
	if err := createPath(parent, image.CreateOptions{Format: Name, Size: 8 << 20, ClusterSize: mib}); err != nil {
		t.Fatal(err)
	}
	pd, err := openPath(parent, image.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ref := bytes.Repeat([]byte("parent!!"), 1<<20)
	if _, err := pd.WriteAt(ref, 0); err != nil {
		t.Fatal(err)
	}
	if err := pd.Close(); err != nil {
		t.Fatal(err)
	}
	if err := createPath(child, image.CreateOptions{Format: Name, BackingFile: "parent.vhdx"}); err != nil {
		t.Fatal(err)
	}
	crash := func(flushed, lost int64) {
		t.Helper()
		d, err := openPath(child, image.OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if flushed >= 0 {
			if _, err := d.WriteAt([]byte("kept"), flushed); err != nil {
				t.Fatal(err)
			}
			if err := d.Flush(); err != nil {
				t.Fatal(err)
			}
			copy(ref[flushed:], "kept")
		}
		if _, err := d.WriteAt([]byte("lost"), lost); err != nil {
			t.Fatal(err)
		}
		d.f.Close() // the crash: no Flush
		if r, err := checkPath(child, image.CheckOptions{}); err != nil || !r.Clean() {
			t.Fatalf("check after the crash: %+v, %v", r, err)
		}
		d2, err := openPath(child, image.OpenOptions{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		imagetest.MustEqual(t, "vdisk after the crash", imagetest.ReadAll(t, d2), ref)
		d2.Close()
	}
	crash(-1, 3*mib+700)
	crash(mib+100, 5*mib+3)
}
