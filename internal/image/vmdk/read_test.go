package vmdk

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"vdisk/internal/image/imagetest"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// scattered are qemu-io writes at scattered offsets, some unaligned, some
// across grain and grain-table boundaries.
var scattered = []string{
	"write -P 0x11 0 4k",
	"write -P 0x22 1000 3000",
	"write -P 0x33 63k 2k",
	"write -P 0x44 5M 300k",
	"write -P 0x55 7340031 1",
	"write -z 5200k 8k",
}

// TestReadQemuImages reads VMDKs qemu-img made, of every subformat, with
// data written by qemu-io, and compares them byte for byte with qemu-img
// convert -O raw.
func TestReadQemuImages(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	imagetest.NeedTool(t, "qemu-io")
	tests := []struct{ name, opts string }{
		{"monolithicSparse", "subformat=monolithicSparse"},
		{"monolithicSparse-zeroed-grain", "subformat=monolithicSparse,zeroed_grain=on"},
		{"monolithicFlat", "subformat=monolithicFlat"},
		{"twoGbMaxExtentSparse", "subformat=twoGbMaxExtentSparse"},
		{"twoGbMaxExtentFlat", "subformat=twoGbMaxExtentFlat"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "img.vmdk")
			imagetest.Run(t, "qemu-img", "create", "-q", "-f", "vmdk", "-o", tc.opts, p, "8M")
			for _, c := range scattered {
				imagetest.Run(t, "qemu-io", "-f", "vmdk", "-c", c, p)
			}
			compareWithQemu(t, p)
		})
	}
	t.Run("streamOptimized", func(t *testing.T) {
		dir := t.TempDir()
		src := filepath.Join(dir, "src.vmdk")
		imagetest.Run(t, "qemu-img", "create", "-q", "-f", "vmdk", src, "8M")
		for _, c := range scattered {
			imagetest.Run(t, "qemu-io", "-f", "vmdk", "-c", c, src)
		}
		p := filepath.Join(dir, "img.vmdk")
		imagetest.Run(t, "qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", src, p)
		compareWithQemu(t, p)
		if _, err := openPath(p, image.OpenOptions{}); err == nil {
			t.Fatal("a stream-optimized image opened read-write")
		}
	})
}

// compareWithQemu reads the image at p whole and compares it with qemu's
// view, and checks Info and Check.
func compareWithQemu(t *testing.T, p string) {
	t.Helper()
	want := imagetest.QemuRaw(t, p, "vmdk")
	if got, err := image.Probe(p); err != nil || got != Name {
		t.Fatalf("probe: %q, %v", got, err)
	}
	d, err := openPath(p, image.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	imagetest.MustEqual(t, "read", imagetest.ReadAll(t, d), want)
	fa, err := infoPath(p)
	if err != nil || fa.VirtualSize != int64(len(want)) {
		t.Fatalf("Info: %+v, %v", fa, err)
	}
	if r, err := checkPath(p, image.CheckOptions{}); err != nil || !r.Clean() {
		t.Fatalf("Check: %+v, %v", r, err)
	}
}

// windows are the guest ranges compared on multi-extent (over 2 GiB)
// images: the ends of each extent, and scattered pieces.
var windows = []struct{ off, n int64 }{
	{0, 1 << 20}, {2<<30 - 1<<20, 2 << 20}, {3 << 30, 1 << 20}, {4<<30 - 1<<20, 2 << 20}, {4<<30 + 300<<20, 1 << 20},
}

// bigWrites are qemu-io writes across the 2 GiB extent boundaries.
var bigWrites = []string{
	"write -P 0x61 2047M 2M",
	"write -P 0x62 4095M 1536k",
	"write -P 0x63 3G 4k",
	"write -P 0x64 4396M 100k",
}

// compareWindows compares the windows of the image at p with the same
// ranges of qemu's raw conversion (a sparse file).
func compareWindows(t *testing.T, p string, d blockdev.Device) {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "ref.raw")
	imagetest.Run(t, "qemu-img", "convert", "-f", "vmdk", "-O", "raw", p, raw)
	rf, err := os.Open(raw)
	if err != nil {
		t.Fatal(err)
	}
	defer rf.Close()
	for _, w := range windows {
		got, want := make([]byte, w.n), make([]byte, w.n)
		if _, err := d.ReadAt(got, w.off); err != nil {
			t.Fatal(err)
		}
		if _, err := rf.ReadAt(want, w.off); err != nil {
			t.Fatal(err)
		}
		imagetest.MustEqual(t, fmt.Sprintf("window at %d", w.off), got, want)
	}
}

// TestReadTwoGbExtents reads 4.5 GiB split images (three extents) qemu
// made, with writes across the extent boundaries.
func TestReadTwoGbExtents(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	imagetest.NeedTool(t, "qemu-io")
	for _, sub := range []string{"twoGbMaxExtentSparse", "twoGbMaxExtentFlat"} {
		t.Run(sub, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "big.vmdk")
			imagetest.Run(t, "qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat="+sub, p, "4608M")
			for _, c := range bigWrites {
				imagetest.Run(t, "qemu-io", "-f", "vmdk", "-c", c, p)
			}
			d, err := openPath(p, image.OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if len(d.extents) != 3 || d.Size() != 4608<<20 {
				t.Fatalf("%d extents, size %d", len(d.extents), d.Size())
			}
			compareWindows(t, p, d)
		})
	}
}

// TestReadBacking reads a chain qemu made: a monolithicSparse parent and
// a child naming it with parentFileNameHint.
func TestReadBacking(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	imagetest.NeedTool(t, "qemu-io")
	dir := t.TempDir()
	base := filepath.Join(dir, "base.vmdk")
	imagetest.Run(t, "qemu-img", "create", "-q", "-f", "vmdk", base, "8M")
	for _, c := range scattered {
		imagetest.Run(t, "qemu-io", "-f", "vmdk", "-c", c, base)
	}
	child := filepath.Join(dir, "child.vmdk")
	imagetest.Run(t, "qemu-img", "create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", child)
	imagetest.Run(t, "qemu-io", "-f", "vmdk", "-c", "write -P 0x77 1000 100", "-c", "write -P 0x78 5100k 200k", child)
	compareWithQemu(t, child)
	fa, err := infoPath(child)
	if err != nil || fa.BackingFile != "base.vmdk" {
		t.Fatalf("Info: %+v, %v", fa, err)
	}
}
