package vhd

import (
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

// TestWriteMatchesQemu creates images with vdisk (dynamic with two block
// sizes, force_size, fixed), writes at random from four goroutines on
// disjoint quarters, zeroes and trims, and checks that qemu-img reads
// exactly what was written, before and after a reopen.
func TestWriteMatchesQemu(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	tests := []struct {
		name string
		size int64
		cs   int64
		opts map[string]string
	}{
		{"dynamic", 9 << 20, 0, nil},
		{"dynamic-64k", 3<<20 + 512, 64 << 10, nil},
		{"dynamic-force-size", 5<<20 + 4096, 0, map[string]string{"force_size": "on"}},
		{"fixed", 6 << 20, 0, map[string]string{"subformat": "fixed"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "img.vhd")
			if err := image.Create(p, image.CreateOptions{Format: Name, Size: tc.size, ClusterSize: tc.cs, Options: tc.opts}); err != nil {
				t.Fatal(err)
			}
			d, err := image.Open(p, image.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if d.Size() < tc.size {
				t.Fatalf("size %d, asked for %d", d.Size(), tc.size)
			}
			if tc.opts["force_size"] == "on" && d.Size() != tc.size {
				t.Fatalf("force_size: size %d, want %d", d.Size(), tc.size)
			}
			ref := make([]byte, d.Size())
			q := d.Size() / 4 &^ 511
			var wg sync.WaitGroup
			for i := range int64(4) {
				wg.Add(1)
				go func() {
					defer wg.Done()
					sec := blockdev.Section(nopClose{d}, i*q, q)
					imagetest.RandomWrites(t, sec, ref[i*q:(i+1)*q], uint64(i+1), 40, 300<<10)
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
			imagetest.MustEqual(t, "qemu read", imagetest.QemuRaw(t, p, "vpc"), ref)
			refPath := filepath.Join(t.TempDir(), "ref.raw")
			if err := os.WriteFile(refPath, ref, 0o644); err != nil {
				t.Fatal(err)
			}
			imagetest.Run(t, "qemu-img", "compare", "-f", "vpc", "-F", "raw", p, refPath)
			r := checkClean(t, p)
			if tc.opts["subformat"] != "fixed" && r.AllocatedClusters == 0 {
				t.Errorf("check found no allocated blocks")
			}
			d2, err := image.Open(p, image.OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer d2.Close()
			imagetest.MustEqual(t, "reopened", imagetest.ReadAll(t, d2), ref)
		})
	}
}

// checkClean runs Check and fails unless the image is clean.
func checkClean(t *testing.T, p string) *image.CheckResult {
	t.Helper()
	r, err := image.Check(p, Name, image.CheckOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !r.Clean() {
		t.Fatalf("check: %+v", r)
	}
	return r
}

// nopClose keeps a Section from closing the device under it.
type nopClose struct{ blockdev.Device }

func (nopClose) Close() error { return nil }

// TestCreateReadByQemu checks what qemu-img info says about images vdisk
// created, and that it reads data vdisk wrote in them.
func TestCreateReadByQemu(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	for _, sub := range []string{"dynamic", "fixed"} {
		t.Run(sub, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "img.vhd")
			if err := image.Create(p, image.CreateOptions{Format: Name, Size: 10 << 20, Options: map[string]string{"subformat": sub}}); err != nil {
				t.Fatal(err)
			}
			out := imagetest.Run(t, "qemu-img", "info", "-f", "vpc", p)
			// qemu rounds 10 MiB up to the geometry 302/4/17.
			if !strings.Contains(out, "(10514432 bytes)") {
				t.Fatalf("qemu-img info:\n%s", out)
			}
			if fa, _ := image.Info(p, Name); fa.VirtualSize != 10514432 {
				t.Errorf("Info: virtual size %d", fa.VirtualSize)
			}
			d, err := image.Open(p, image.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			ref := make([]byte, d.Size())
			imagetest.RandomWrites(t, d, ref, 3, 30, 1<<20)
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			imagetest.MustEqual(t, "qemu read", imagetest.QemuRaw(t, p, "vpc"), ref)
		})
	}
}

// TestConformance runs the blockdev conformance suite on dynamic, fixed
// and differencing images.
func TestConformance(t *testing.T) {
	for _, sub := range []string{"dynamic", "fixed"} {
		t.Run(sub, func(t *testing.T) {
			blockdevtest.Run(t, func(t *testing.T, size int64) blockdev.Device {
				p := filepath.Join(t.TempDir(), "img.vhd")
				opts := map[string]string{"subformat": sub, "force_size": "on"}
				cs := int64(64 << 10)
				if sub == "fixed" {
					cs = 0
				}
				if err := image.Create(p, image.CreateOptions{Format: Name, Size: size, ClusterSize: cs, Options: opts}); err != nil {
					t.Fatal(err)
				}
				d, err := image.Open(p, image.OpenOptions{})
				if err != nil {
					t.Fatal(err)
				}
				return d
			})
		})
	}
	t.Run("differencing", func(t *testing.T) {
		blockdevtest.Run(t, func(t *testing.T, size int64) blockdev.Device {
			dir := t.TempDir()
			base := filepath.Join(dir, "base.vhd")
			if err := image.Create(base, image.CreateOptions{Format: Name, Size: size, ClusterSize: 64 << 10, Options: map[string]string{"force_size": "on"}}); err != nil {
				t.Fatal(err)
			}
			bd, err := image.Open(base, image.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			imagetest.RandomWrites(t, bd, make([]byte, size), 9, 20, 64<<10)
			if err := bd.Close(); err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(dir, "child.vhd")
			if err := image.Create(p, image.CreateOptions{Format: Name, BackingFile: "base.vhd", ClusterSize: 64 << 10}); err != nil {
				t.Fatal(err)
			}
			d, err := image.Open(p, image.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			return d
		})
	})
	t.Run("read-only", func(t *testing.T) {
		blockdevtest.Run(t, func(t *testing.T, size int64) blockdev.Device {
			p := filepath.Join(t.TempDir(), "img.vhd")
			if err := image.Create(p, image.CreateOptions{Format: Name, Size: size, ClusterSize: 64 << 10, Options: map[string]string{"force_size": "on"}}); err != nil {
				t.Fatal(err)
			}
			d, err := image.Open(p, image.OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			return d
		})
	})
}

// TestInMemoryFile creates, writes and reopens dynamic and fixed VHDs
// whose file is an object store's (in memory), and has qemu-img read
// them.
func TestInMemoryFile(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	for _, sub := range []string{"dynamic", "fixed"} {
		t.Run(sub, func(t *testing.T) {
			mb := imagetest.NewMemBackend(64 << 20)
			opt := image.CreateOptions{Format: Name, Size: 5<<20 + 512, Options: map[string]string{"subformat": sub, "force_size": "on"}}
			if err := image.CreateIn(image.NewBackendFile(mb), opt); err != nil {
				t.Fatal(err)
			}
			d, err := image.OpenFile(image.NewBackendFile(mb.Reopen()), image.OpenOptions{Format: Name})
			if err != nil {
				t.Fatal(err)
			}
			ref := make([]byte, d.Size())
			imagetest.RandomWrites(t, d, ref, 11, 30, 700<<10)
			if err := blockdev.WriteZeroes(d, 1<<20, 1<<20, true); err != nil {
				t.Fatal(err)
			}
			clear(ref[1<<20 : 2<<20])
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(t.TempDir(), "img.vhd")
			mb.WriteFile(t, p)
			imagetest.MustEqual(t, "qemu read", imagetest.QemuRaw(t, p, "vpc"), ref)
			checkClean(t, p)
		})
	}
}
