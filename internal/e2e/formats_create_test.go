package e2e

import (
	"cmp"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"vdisk/internal/api"
	"vdisk/internal/image/imagetest"
)

// createdImages are the subformats and options vdisk create makes that
// TestOpenCreatedSubformats opens, beside each format's default.
var createdImages = []struct {
	format diskFormat
	args   []string
	// lbs is the disk's logical block size; qemu opens no VHDX with
	// 4096-byte logical sectors, so vdisk check and e2fsck judge those.
	lbs uint32
}{
	{format: diskFormats[0], args: []string{"--cluster-size", "4K"}},
	{format: diskFormats[0], args: []string{"-o", "compat=0.10"}},
	{format: diskFormats[0], args: []string{"-o", "extended_l2=on", "--cluster-size", "128K"}},
	{format: diskFormats[1], args: []string{"-o", "subformat=fixed"}},
	{format: diskFormats[1], args: []string{"-o", "logical_sector_size=4096"}, lbs: 4096},
	{format: diskFormats[1], args: []string{"--cluster-size", "32M"}},
	{format: diskFormats[2], args: []string{"-o", "subformat=monolithicFlat"}},
	{format: diskFormats[2], args: []string{"-o", "subformat=twoGbMaxExtentSparse"}},
	{format: diskFormats[2], args: []string{"-o", "subformat=twoGbMaxExtentFlat"}},
	{format: diskFormats[2], args: []string{"--cluster-size", "4K"}},
	{format: diskFormats[3], args: []string{"-o", "static=on"}},
	{format: diskFormats[4], args: []string{"-o", "subformat=fixed"}},
	{format: diskFormats[4], args: []string{"-o", "force_size=on"}},
	{format: diskFormats[4], args: []string{"--cluster-size", "512K"}},
}

// TestOpenCreatedSubformats carries an ext4 file system through images of
// every subformat vdisk create makes: after close the file system is
// clean, qemu-img check passes and qemu-img reads exactly what the device
// served; reopened, the files are there.
func TestOpenCreatedSubformats(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	for _, tc := range createdImages {
		f := tc.format
		t.Run(f.name+"/"+strings.NewReplacer("=", "-", "--", "").Replace(strings.Join(tc.args, "-")), func(t *testing.T) {
			e := newEnv(t)
			img := filepath.Join(e.dir, "disk."+f.name)
			mnt := filepath.Join(e.dir, "mnt")
			e.must(append([]string{"create", "-f", f.name, img, "--size", "64M"}, tc.args...)...)
			d := e.openJSON(img)
			if d.Format != f.name || d.Via != api.ViaFUSE || d.Size < 64<<20 || d.LogicalBlockSize != cmp.Or(tc.lbs, 512) {
				t.Fatalf("record %+v, want a 64 MiB %s disk via fuse with %d-byte blocks", d, f.name, cmp.Or(tc.lbs, 512))
			}
			sh(t, "mkfs.ext4", "-q", "-F", d.Device)
			mount(t, d.Device, mnt)
			sums := writeFiles(t, mnt, 3<<20, 70000)
			sh(t, "umount", mnt)
			served := copyDevice(t, d.Device)
			e.must("close", img)
			sh(t, "e2fsck", "-fn", served)
			switch {
			case tc.lbs == 4096:
				e.must("check", img)
			case f.check:
				sh(t, "qemu-img", "check", "-q", "-f", f.qemu, img)
			}
			if tc.lbs != 4096 {
				sh(t, "qemu-img", "compare", "-q", "-f", f.qemu, "-F", "raw", img, served)
			}

			dev, _ := e.open(img)
			mount(t, dev, mnt)
			checkFiles(t, mnt, sums)
			sh(t, "umount", mnt)
			e.must("close", dev)
		})
	}
}

// TestOpenDifferencing writes through differencing images vdisk created
// (VHD, VHDX and VMDK children of a parent of their own format): the
// child shows the parent's data, the parent is never written, and the
// child reopened holds the parent's data with the writes on top. qemu-img
// checks and reads the VMDK child (qemu opens no VHD or VHDX children).
func TestOpenDifferencing(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	for _, f := range []diskFormat{diskFormats[1], diskFormats[2], diskFormats[4]} {
		t.Run(f.name, func(t *testing.T) {
			e := newEnv(t)
			base := filepath.Join(e.dir, "base."+f.name)
			child := filepath.Join(e.dir, "child."+f.name)
			e.must("create", "-f", f.name, base, "--size", "64M")
			d := e.openJSON(base)
			expected := filepath.Join(t.TempDir(), "expected.raw")
			if err := os.WriteFile(expected, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(expected, d.Size); err != nil {
				t.Fatal(err)
			}
			writePatterns(t, d.Device, expected, []patternWrite{
				{off: 0, n: 3 << 20, b: 0xb0},
				{off: 20 << 20, n: 2 << 20, b: 0xb1},
				{off: d.Size - 512, n: 512, b: 0xb2},
			})
			e.must("close", base)
			baseSum := fileSum(t, base)

			// Relative: found next to the child.
			e.must("create", "-f", f.name, child, "-b", filepath.Base(base), "-F", f.name)
			c := e.openJSON(child)
			if c.Format != f.name || c.Size != d.Size || c.ReadOnly {
				t.Fatalf("child record %+v, want a writable %d-byte %s disk", c, d.Size, f.name)
			}
			imagetest.MustEqual(t, "the parent through the child", readFile(t, copyDevice(t, c.Device)), readFile(t, expected))
			// Inside a sector and a block of the parent's data, across the
			// end of it, and where the parent has none.
			writePatterns(t, c.Device, expected, []patternWrite{
				{off: 1<<20 + 512, n: 1024, b: 0xc0},
				{off: 3<<20 - 4096, n: 64 << 10, b: 0xc1},
				{off: 40 << 20, n: 1 << 20, b: 0xc2},
				{off: 20<<20 + 100<<10, n: 4096, b: 0xc3},
			})
			e.must("close", child)
			if got := fileSum(t, base); got != baseSum {
				t.Fatalf("parent changed: sha256 %s, was %s", got, baseSum)
			}
			if f.name == "vmdk" {
				sh(t, "qemu-img", "check", "-q", "-f", f.qemu, child)
				sh(t, "qemu-img", "compare", "-q", "-f", f.qemu, "-F", "raw", child, expected)
			}
			dev, _ := e.open(child)
			imagetest.MustEqual(t, "the child reopened", readFile(t, copyDevice(t, dev)), readFile(t, expected))
			e.must("close", dev)
		})
	}
}
