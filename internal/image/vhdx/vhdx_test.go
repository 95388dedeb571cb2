package vhdx

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"vdisk/internal/image/imagetest"

	"vdisk/internal/blockdev"
	"vdisk/internal/blockdev/blockdevtest"
	"vdisk/internal/image"
)

// scattered are qemu-io writes at scattered offsets, some unaligned, some
// across block boundaries.
var scattered = []string{
	"write -P 0x11 0 4k",
	"write -P 0x22 1000 3000",
	"write -P 0x33 1023k 2k",
	"write -P 0x44 5M 300k",
	"write -P 0x55 9437183 1",
	"write -z 5200k 8k",
}

// TestReadQemuImages reads VHDXs qemu-img made (dynamic with several block
// sizes, fixed, 4 KiB logical sectors) with data written by qemu-io, and
// compares them with qemu-img convert -O raw.
func TestReadQemuImages(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	imagetest.NeedTool(t, "qemu-io")
	for _, tc := range []struct{ name, opts string }{
		{"dynamic-1M", "subformat=dynamic,block_size=1M"},
		{"dynamic-8M", "subformat=dynamic,block_size=8M"},
		{"dynamic-32M", "subformat=dynamic,block_size=32M"},
		{"dynamic-2M-log-2M", "subformat=dynamic,block_size=2M,log_size=2M"},
		{"fixed", "subformat=fixed,block_size=1M"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "img.vhdx")
			imagetest.Run(t, "qemu-img", "create", "-q", "-f", "vhdx", "-o", tc.opts, p, "9M")
			for _, c := range scattered {
				imagetest.Run(t, "qemu-io", "-f", "vhdx", "-c", c, p)
			}
			want := imagetest.QemuRaw(t, p, "vhdx")
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
			if err != nil || fa.VirtualSize != int64(len(want)) || fa.Dirty {
				t.Fatalf("Info: %+v, %v", fa, err)
			}
			if r, err := checkPath(p, image.CheckOptions{}); err != nil || !r.Clean() {
				t.Fatalf("Check: %+v, %v", r, err)
			}
		})
	}
}

// nopClose keeps a Section from closing the device under it.
type nopClose struct{ blockdev.Device }

func (nopClose) Close() error { return nil }

// TestWriteMatchesQemu creates VHDXs with vdisk (dynamic with two block
// sizes, fixed) and qemu-img, writes at random from four
// goroutines, zeroes a range, and checks with qemu-img check and compare,
// and by reopening.
func TestWriteMatchesQemu(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	for _, tc := range []struct {
		name    string
		cs      int64
		opts    map[string]string
		qemuOpt string // made by qemu-img with these options instead
	}{
		{name: "dynamic", opts: nil},
		{name: "dynamic-1M", cs: 1 << 20},
		{name: "fixed", cs: 1 << 20, opts: map[string]string{"subformat": "fixed"}},
		{name: "qemu-dynamic", qemuOpt: "subformat=dynamic,block_size=1M"},
		{name: "qemu-fixed", qemuOpt: "subformat=fixed,block_size=1M"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "img.vhdx")
			const size = 9 << 20
			if tc.qemuOpt != "" {
				imagetest.Run(t, "qemu-img", "create", "-q", "-f", "vhdx", "-o", tc.qemuOpt, p, "9M")
			} else if err := createPath(p, image.CreateOptions{Format: Name, Size: size, ClusterSize: tc.cs, Options: tc.opts}); err != nil {
				t.Fatal(err)
			}
			imagetest.Run(t, "qemu-img", "check", p)
			d, err := openPath(p, image.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if d.Size() != size {
				t.Fatalf("size %d", d.Size())
			}
			ref := make([]byte, size)
			q := int64(size) / 4
			var wg sync.WaitGroup
			for i := range int64(4) {
				wg.Add(1)
				go func() {
					defer wg.Done()
					imagetest.RandomWrites(t, blockdev.Section(nopClose{d}, i*q, q), ref[i*q:(i+1)*q], uint64(i+1), 40, 300<<10)
				}()
			}
			wg.Wait()
			if err := blockdev.WriteZeroes(d, 100<<10, 2<<20, true); err != nil {
				t.Fatal(err)
			}
			clear(ref[100<<10 : 100<<10+2<<20])
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			imagetest.Run(t, "qemu-img", "check", p)
			imagetest.MustEqual(t, "qemu read", imagetest.QemuRaw(t, p, "vhdx"), ref)
			refPath := filepath.Join(t.TempDir(), "ref.raw")
			if err := os.WriteFile(refPath, ref, 0o644); err != nil {
				t.Fatal(err)
			}
			imagetest.Run(t, "qemu-img", "compare", "-f", "vhdx", "-F", "raw", p, refPath)
			d2, err := openPath(p, image.OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer d2.Close()
			imagetest.MustEqual(t, "reopened", imagetest.ReadAll(t, d2), ref)
		})
	}
}

// TestConformance runs the blockdev conformance suite on dynamic, fixed
// and read-only images, and on 4 KiB logical sectors (which qemu does not
// open, so this is their only check).
func TestConformance(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts map[string]string
		ro   bool
	}{{"dynamic", nil, false}, {"fixed", map[string]string{"subformat": "fixed"}, false}, {"read-only", nil, true},
		{"4k-sectors", map[string]string{"logical_sector_size": "4096"}, false}} {
		t.Run(tc.name, func(t *testing.T) {
			blockdevtest.Run(t, func(t *testing.T, size int64) blockdev.Device {
				p := filepath.Join(t.TempDir(), "img.vhdx")
				if err := createPath(p, image.CreateOptions{Format: Name, Size: size, ClusterSize: 1 << 20, Options: tc.opts}); err != nil {
					t.Fatal(err)
				}
				d, err := openPath(p, image.OpenOptions{ReadOnly: tc.ro})
				if err != nil {
					t.Fatal(err)
				}
				return d
			})
		})
	}
}

// TestMemFile makes, writes and reopens a VHDX in an in-memory File (as
// in an object store); a differencing disk there cannot name its parent.
func TestMemFile(t *testing.T) {
	m := newMemFile(nil)
	if err := image.CreateIn(m, image.CreateOptions{Format: Name, Size: 5 << 20, ClusterSize: mib}); err != nil {
		t.Fatal(err)
	}
	d, err := image.OpenFile(m, image.OpenOptions{Format: Name})
	if err != nil {
		t.Fatal(err)
	}
	ref := make([]byte, 5<<20)
	imagetest.RandomWrites(t, d, ref, 7, 20, 300<<10)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d, err = image.OpenFile(m.Reopen(), image.OpenOptions{Format: Name, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	imagetest.MustEqual(t, "reopened", imagetest.ReadAll(t, d), ref)
	d.Close()
	if fa, err := image.InfoOf(m.Reopen(), Name); err != nil || fa.VirtualSize != 5<<20 || fa.DiskSize != int64(len(m.Bytes())) {
		t.Fatalf("Info %+v, %v", fa, err)
	}
	err = image.CreateIn(newMemFile(nil), image.CreateOptions{Format: Name, BackingFile: "parent.vhdx",
		Names: image.NoNames{Why: "images in an object store name no files"}})
	if !errors.Is(err, image.ErrBackingRefused) || !strings.Contains(err.Error(), "object store") {
		t.Fatalf("differencing disk in memory: %v", err)
	}
}
