package vmdk

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"vdisk/internal/image/imagetest"

	"vdisk/internal/blockdev"
	"vdisk/internal/blockdev/blockdevtest"
	"vdisk/internal/image"
)

// nopClose keeps a Section from closing the device under it.
type nopClose struct{ blockdev.Device }

func (nopClose) Close() error { return nil }

// TestWriteMatchesQemu creates VMDKs of each subformat with vdisk, writes
// at random from four goroutines on disjoint quarters, and checks with
// qemu-img check and compare, and by reopening.
func TestWriteMatchesQemu(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	for _, tc := range []struct {
		sub   string
		grain int64
	}{
		{MonolithicSparse, 0}, {MonolithicSparse, 4096}, {MonolithicFlat, 0}, {TwoGbMaxExtentSparse, 0}, {TwoGbMaxExtentFlat, 0},
	} {
		t.Run(tc.sub, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "img.vmdk")
			const size = 9<<20 + 512
			if err := createPath(p, image.CreateOptions{Format: Name, Size: size, ClusterSize: tc.grain, Options: map[string]string{"subformat": tc.sub}}); err != nil {
				t.Fatal(err)
			}
			imagetest.Run(t, "qemu-img", "check", p)
			d, err := openPath(p, image.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if d.Size() != size || d.CreateType() != tc.sub {
				t.Fatalf("size %d, type %s", d.Size(), d.CreateType())
			}
			ref := make([]byte, size)
			q := int64(size) / 4 &^ 511
			var wg sync.WaitGroup
			for i := range int64(4) {
				wg.Add(1)
				go func() {
					defer wg.Done()
					imagetest.RandomWrites(t, blockdev.Section(nopClose{d}, i*q, q), ref[i*q:(i+1)*q], uint64(i+1), 40, 300<<10)
				}()
			}
			wg.Wait()
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			imagetest.Run(t, "qemu-img", "check", p)
			imagetest.MustEqual(t, "qemu read", imagetest.QemuRaw(t, p, "vmdk"), ref)
			refPath := filepath.Join(t.TempDir(), "ref.raw")
			if err := os.WriteFile(refPath, ref, 0o644); err != nil {
				t.Fatal(err)
			}
			imagetest.Run(t, "qemu-img", "compare", "-f", "vmdk", "-F", "raw", p, refPath)
			if r, err := checkPath(p, image.CheckOptions{}); err != nil || !r.Clean() {
				t.Fatalf("Check: %+v, %v", r, err)
			}
			d2, err := openPath(p, image.OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer d2.Close()
			imagetest.MustEqual(t, "reopened", imagetest.ReadAll(t, d2), ref)
		})
	}
}

// TestWriteTwoGbExtents creates 4.5 GiB split images with vdisk, writes
// across the extent boundaries, and compares windows with qemu's view.
func TestWriteTwoGbExtents(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	for _, sub := range []string{TwoGbMaxExtentSparse, TwoGbMaxExtentFlat} {
		t.Run(sub, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "big.vmdk")
			if err := createPath(p, image.CreateOptions{Format: Name, Size: 4608 << 20, Options: map[string]string{"subformat": sub}}); err != nil {
				t.Fatal(err)
			}
			d, err := openPath(p, image.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for i, off := range []int64{2<<30 - 1<<20 + 3, 4<<30 - 5000, 3 << 30, 4<<30 + 300<<20} {
				b := bytes.Repeat([]byte{byte(0x70 + i)}, 1<<20+777)
				if _, err := d.WriteAt(b, off); err != nil {
					t.Fatal(err)
				}
			}
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			imagetest.Run(t, "qemu-img", "check", p)
			d, err = openPath(p, image.OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if len(d.extents) != 3 {
				t.Fatalf("%d extents", len(d.extents))
			}
			compareWindows(t, p, d)
		})
	}
}

// TestWriteChild writes into a child vdisk created over a parent qemu
// wrote: partial grains are filled from the parent, the parent is
// untouched, and qemu reads the chain as vdisk does.
func TestWriteChild(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	imagetest.NeedTool(t, "qemu-io")
	dir := t.TempDir()
	base := filepath.Join(dir, "base.vmdk")
	imagetest.Run(t, "qemu-img", "create", "-q", "-f", "vmdk", base, "8M")
	for _, c := range scattered {
		imagetest.Run(t, "qemu-io", "-f", "vmdk", "-c", c, base)
	}
	baseRaw := imagetest.QemuRaw(t, base, "vmdk")
	child := filepath.Join(dir, "child.vmdk")
	if err := createPath(child, image.CreateOptions{Format: Name, BackingFile: "base.vmdk"}); err != nil {
		t.Fatal(err)
	}
	d, err := openPath(child, image.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ref := bytes.Clone(baseRaw)
	imagetest.MustEqual(t, "fresh child", imagetest.ReadAll(t, d), ref)
	imagetest.RandomWrites(t, d, ref, 11, 30, 200<<10)
	imagetest.MustEqual(t, "written child", imagetest.ReadAll(t, d), ref)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	imagetest.Run(t, "qemu-img", "check", child)
	imagetest.MustEqual(t, "qemu reads the child", imagetest.QemuRaw(t, child, "vmdk"), ref)
	imagetest.MustEqual(t, "parent untouched", imagetest.QemuRaw(t, base, "vmdk"), baseRaw)
}

// TestConformance runs the blockdev conformance suite on each writable
// subformat, on a child over a parent, and read-only.
func TestConformance(t *testing.T) {
	for _, sub := range []string{MonolithicSparse, MonolithicFlat, TwoGbMaxExtentSparse} {
		t.Run(sub, func(t *testing.T) {
			blockdevtest.Run(t, func(t *testing.T, size int64) blockdev.Device {
				p := filepath.Join(t.TempDir(), "img.vmdk")
				if err := createPath(p, image.CreateOptions{Format: Name, Size: size, ClusterSize: 4096, Options: map[string]string{"subformat": sub}}); err != nil {
					t.Fatal(err)
				}
				d, err := openPath(p, image.OpenOptions{})
				if err != nil {
					t.Fatal(err)
				}
				return d
			})
		})
	}
	t.Run("child", func(t *testing.T) {
		blockdevtest.Run(t, func(t *testing.T, size int64) blockdev.Device {
			dir := t.TempDir()
			base := filepath.Join(dir, "base.vmdk")
			if err := createPath(base, image.CreateOptions{Format: Name, Size: size}); err != nil {
				t.Fatal(err)
			}
			bd, err := openPath(base, image.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			imagetest.RandomWrites(t, bd, make([]byte, size), 4, 20, 64<<10)
			if err := bd.Close(); err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(dir, "child.vmdk")
			if err := createPath(p, image.CreateOptions{Format: Name, BackingFile: "base.vmdk"}); err != nil {
				t.Fatal(err)
			}
			d, err := openPath(p, image.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			return d
		})
	})
	t.Run("read-only", func(t *testing.T) {
		blockdevtest.Run(t, func(t *testing.T, size int64) blockdev.Device {
			p := filepath.Join(t.TempDir(), "img.vmdk")
			if err := createPath(p, image.CreateOptions{Format: Name, Size: size}); err != nil {
				t.Fatal(err)
			}
			d, err := openPath(p, image.OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			return d
		})
	})
}

// TestCIDChanges checks that the first write gives the descriptor a new
// CID (embedded and in a descriptor file), and that qemu still reads the
// image.
func TestCIDChanges(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	for _, sub := range []string{MonolithicSparse, MonolithicFlat} {
		t.Run(sub, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "img.vmdk")
			if err := createPath(p, image.CreateOptions{Format: Name, Size: 1 << 20, Options: map[string]string{"subformat": sub}}); err != nil {
				t.Fatal(err)
			}
			cid := func() string {
				d, err := openPath(p, image.OpenOptions{ReadOnly: true})
				if err != nil {
					t.Fatal(err)
				}
				defer d.Close()
				return d.desc.cid
			}
			before := cid()
			d, err := openPath(p, image.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := d.WriteAt([]byte("x"), 0); err != nil {
				t.Fatal(err)
			}
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			if after := cid(); after == before || len(after) != 8 {
				t.Fatalf("CID %s before the write, %s after", before, after)
			}
			imagetest.Run(t, "qemu-img", "check", p)
			if got := imagetest.QemuRaw(t, p, "vmdk"); got[0] != 'x' {
				t.Fatal("qemu does not read the write")
			}
		})
	}
}

// TestWriteChildTwoGb writes into the later extents of a
// twoGbMaxExtentSparse child: a new grain is filled from the parent at
// the grain's offset in the disk, not in the extent, and the extents of
// unallocated grains are the parent's, where the disk has them.
func TestWriteChildTwoGb(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.vmdk")
	if err := createPath(base, image.CreateOptions{Format: Name, Size: 5 << 30}); err != nil {
		t.Fatal(err)
	}
	pd, err := openPath(base, image.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pattern := bytes.Repeat([]byte("parent!"), 20000)
	at := []int64{2<<30 + 100, 4<<30 + 300<<10}
	for _, off := range at {
		if _, err := pd.WriteAt(pattern, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := pd.Close(); err != nil {
		t.Fatal(err)
	}
	child := filepath.Join(dir, "child.vmdk")
	if err := createPath(child, image.CreateOptions{Format: Name, BackingFile: "base.vmdk", Options: map[string]string{"subformat": TwoGbMaxExtentSparse}}); err != nil {
		t.Fatal(err)
	}
	d, err := openPath(child, image.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ext, err := blockdev.Extents(d, 4<<30, 1<<20)
	if err != nil || len(ext) < 2 || ext[0].Flags&blockdev.ExtentZero == 0 || ext[1].Off != at[1] || ext[1].Flags != blockdev.ExtentHole {
		t.Fatalf("extents of the child at 4 GiB: %+v, %v (want zeroes, then the parent's data at %d)", ext, err, at[1])
	}
	for _, off := range at {
		if _, err := d.WriteAt([]byte{'X'}, off+5); err != nil {
			t.Fatal(err)
		}
		want := bytes.Clone(pattern)
		want[5] = 'X'
		got := make([]byte, len(pattern))
		if _, err := d.ReadAt(got, off); err != nil {
			t.Fatal(err)
		}
		imagetest.MustEqual(t, fmt.Sprintf("child at %d", off), got, want)
	}
}

// TestZeroesMatchQemu zeroes and trims ranges of a written disk, of each
// writable subformat, and of a child over its parent: qemu-img check finds
// them consistent and qemu reads the zeroes.
func TestZeroesMatchQemu(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	dir := t.TempDir()
	const size = 8 << 20
	base := filepath.Join(dir, "base.vmdk")
	for _, sub := range []string{MonolithicSparse, MonolithicFlat, TwoGbMaxExtentSparse, "child"} {
		t.Run(sub, func(t *testing.T) {
			p, opt := filepath.Join(dir, sub+".vmdk"), image.CreateOptions{Format: Name, Size: size}
			if sub == "child" {
				opt.BackingFile = "base.vmdk"
			} else {
				opt.Options = map[string]string{"subformat": sub}
			}
			if err := createPath(p, opt); err != nil {
				t.Fatal(err)
			}
			d, err := openPath(p, image.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			ref := make([]byte, size)
			if sub == "child" {
				ref = imagetest.QemuRaw(t, base, "vmdk")
			}
			imagetest.RandomWrites(t, d, ref, 5, 20, 300<<10)
			for i, r := range [][2]int64{{1000, 200 << 10}, {3 << 20, 1 << 20}, {6<<20 + 512, 70 << 10}} {
				if err := d.WriteZeroes(r[0], r[1], i%2 == 0); err != nil {
					t.Fatal(err)
				}
				clear(ref[r[0] : r[0]+r[1]])
			}
			imagetest.MustEqual(t, "vdisk", imagetest.ReadAll(t, d), ref)
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			imagetest.Run(t, "qemu-img", "check", p)
			imagetest.MustEqual(t, "qemu", imagetest.QemuRaw(t, p, "vmdk"), ref)
			if sub == MonolithicSparse { // the parent of the child
				if err := os.Rename(p, base); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}
