package vhd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"vdisk/internal/image/imagetest"

	"vdisk/internal/image"
)

// TestDifferencing makes a dynamic parent with qemu-img and qemu-io, a
// differencing child with vdisk, writes into the child (unaligned, across
// sectors and blocks) and checks that it reads as the parent overlaid with
// the writes, that the parent is unchanged, and that the child's own layer
// (NoBacking) is what qemu-img, which ignores parents, reads from it.
func TestDifferencing(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	imagetest.NeedTool(t, "qemu-io")
	dir := t.TempDir()
	base := filepath.Join(dir, "base.vhd")
	imagetest.Run(t, "qemu-img", "create", "-q", "-f", "vpc", base, "8M")
	for _, c := range scattered {
		imagetest.Run(t, "qemu-io", "-f", "vpc", "-c", c, base)
	}
	baseRaw := imagetest.QemuRaw(t, base, "vpc")
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	child := filepath.Join(sub, "child.vhd")
	if err := image.Create(child, image.CreateOptions{Format: Name, BackingFile: "../base.vhd", Names: image.LocalNames{Dirs: []string{dir}}}); err != nil {
		t.Fatal(err)
	}
	trusted := image.OpenOptions{BackingDir: dir} // the parent lies outside sub
	d, err := image.Open(child, trusted)
	if err != nil {
		t.Fatal(err)
	}
	if d.Size() != int64(len(baseRaw)) {
		t.Fatalf("child size %d, parent %d", d.Size(), len(baseRaw))
	}
	ref := bytes.Clone(baseRaw)
	imagetest.MustEqual(t, "fresh child", imagetest.ReadAll(t, d), ref)
	layer := make([]byte, len(ref)) // the child's own sectors, as qemu sees them
	for _, w := range []struct {
		off int64
		n   int
		b   byte
	}{{1000, 100, 0xa1}, {4095, 2, 0xa2}, {2<<20 - 700, 1500, 0xa3}, {5<<20 + 100, 64 << 10, 0xa4}, {1030, 10, 0xa5}} {
		p := bytes.Repeat([]byte{w.b}, w.n)
		if _, err := d.WriteAt(p, w.off); err != nil {
			t.Fatal(err)
		}
		copy(ref[w.off:], p)
		lo, hi := w.off&^511, (w.off+int64(w.n)+511)&^511
		copy(layer[lo:hi], ref[lo:hi])
	}
	imagetest.RandomWrites(t, d, ref, 5, 10, 100<<10)
	imagetest.MustEqual(t, "written child", imagetest.ReadAll(t, d), ref)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	imagetest.MustEqual(t, "parent after child writes", imagetest.QemuRaw(t, base, "vpc"), baseRaw)
	d, err = image.Open(child, image.OpenOptions{ReadOnly: true, BackingDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	imagetest.MustEqual(t, "reopened child", imagetest.ReadAll(t, d), ref)
	d.Close()
	fa, err := image.Info(child, Name)
	if err != nil {
		t.Fatal(err)
	}
	if fa.BackingFile != "../base.vhd" || fa.BackingFormat != Name {
		t.Errorf("Info backing %q (%q)", fa.BackingFile, fa.BackingFormat)
	}

	t.Run("no-backing-matches-qemu", func(t *testing.T) {
		// Only the fixed pieces: the random writes are in ref but not in
		// layer, so compare the layer where qemu sees the child alone.
		d, err := image.Open(child, image.OpenOptions{ReadOnly: true, NoBacking: true})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		imagetest.MustEqual(t, "child layer", imagetest.ReadAll(t, d), imagetest.QemuRaw(t, child, "vpc"))
	})
	t.Run("outside-refused", func(t *testing.T) {
		_, err := image.Open(child, image.OpenOptions{ReadOnly: true})
		if !errors.Is(err, image.ErrBackingRefused) || !strings.Contains(err.Error(), image.BackingDirFlag) {
			t.Fatalf("open with the parent outside the image's directory: %v", err)
		}
	})
	t.Run("missing-parent", func(t *testing.T) {
		if err := os.Rename(base, base+".away"); err != nil {
			t.Fatal(err)
		}
		defer os.Rename(base+".away", base)
		_, err := image.Open(child, image.OpenOptions{ReadOnly: true, BackingDir: dir})
		if err == nil || !strings.Contains(err.Error(), "does not exist") {
			t.Fatalf("open with a missing parent: %v", err)
		}
	})
	t.Run("loop", func(t *testing.T) {
		dir2 := t.TempDir()
		a := filepath.Join(dir2, "a.vhd")
		imagetest.Run(t, "qemu-img", "create", "-q", "-f", "vpc", a, "1M")
		b := filepath.Join(dir2, "b.vhd")
		if err := image.Create(b, image.CreateOptions{Format: Name, BackingFile: "a.vhd"}); err != nil {
			t.Fatal(err)
		}
		// Make a's parent b: copy b's differencing header over a.
		bb, _ := os.ReadFile(b)
		os.Remove(a)
		os.WriteFile(a, bb, 0o644)
		if err := os.Remove(b); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("a.vhd", b); err != nil {
			t.Fatal(err)
		}
		_, err := image.Open(a, image.OpenOptions{ReadOnly: true})
		if !errors.Is(err, image.ErrBackingRefused) {
			t.Fatalf("open of a self-referencing chain: %v", err)
		}
	})
	t.Run("absolute-parent", func(t *testing.T) {
		// The name is recorded as given (an absolute W2ku locator); the
		// parent is opened only where the user trusts it.
		other := filepath.Join(t.TempDir(), "child.vhd")
		if err := image.Create(other, image.CreateOptions{Format: Name, BackingFile: base}); !errors.Is(err, image.ErrBackingRefused) {
			t.Fatalf("create with an untrusted parent: %v", err)
		}
		trust := image.LocalNames{Dirs: []string{dir}}
		if err := image.Create(other, image.CreateOptions{Format: Name, BackingFile: base, Names: trust}); err != nil {
			t.Fatal(err)
		}
		if fa, err := image.Info(other, Name); err != nil || fa.BackingFile != base {
			t.Fatalf("Info: %+v, %v", fa, err)
		}
		if _, err := image.Open(other, image.OpenOptions{ReadOnly: true}); !errors.Is(err, image.ErrBackingRefused) {
			t.Fatalf("open with an untrusted absolute parent: %v", err)
		}
		d, err := image.Open(other, image.OpenOptions{ReadOnly: true, BackingDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		imagetest.MustEqual(t, "child of an absolute parent", imagetest.ReadAll(t, d), baseRaw)
	})
	t.Run("protocol-name", func(t *testing.T) {
		// A locator naming nbd: is refused before anything is opened.
		b := imagetest.ReadFile(t, child)
		md, err := load(imagetest.NewMemFile("mem.vhd", b))
		if err != nil {
			t.Fatal(err)
		}
		l := md.dh.locators[0]
		name := encodeUTF16("nbd:evil:10809", binary.LittleEndian)
		copy(b[l.offset:l.offset+uint64(l.length)], append(name, make([]byte, l.length)...))
		p := filepath.Join(sub, "evil.vhd")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err = image.Open(p, image.OpenOptions{ReadOnly: true, BackingDir: dir})
		if !errors.Is(err, image.ErrBackingRefused) || !strings.Contains(err.Error(), "protocol") {
			t.Fatalf("open of a child naming nbd:: %v", err)
		}
	})
}
