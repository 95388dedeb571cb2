package vdi

import (
	"os"
	"path/filepath"
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
	"write -P 0x55 7340031 1",
	"write -z 5200k 8k",
}

// TestReadQemuImages reads VDIs qemu-img made (dynamic, static) with data
// written by qemu-io, and compares them with qemu-img convert -O raw.
func TestReadQemuImages(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	imagetest.NeedTool(t, "qemu-io")
	for _, tc := range []struct{ name, opts, size string }{
		{"dynamic", "static=off", "8M"},
		{"dynamic-odd", "static=off", "7777k"},
		{"static", "static=on", "8M"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "img.vdi")
			imagetest.Run(t, "qemu-img", "create", "-q", "-f", "vdi", "-o", tc.opts, p, tc.size)
			for _, c := range scattered {
				imagetest.Run(t, "qemu-io", "-f", "vdi", "-c", c, p)
			}
			want := imagetest.QemuRaw(t, p, "vdi")
			if got, err := image.Probe(p); err != nil || got != Name {
				t.Fatalf("probe: %q, %v", got, err)
			}
			d, err := image.Open(p, image.OpenOptions{Format: Name, ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			imagetest.MustEqual(t, "read", imagetest.ReadAll(t, d), want)
			fa, err := image.Info(p, Name)
			if err != nil || fa.VirtualSize != int64(len(want)) || fa.ClusterSize != DefaultBlockSize {
				t.Errorf("Info: %+v, %v", fa, err)
			}
		})
	}
}

// TestWriteMatchesQemu creates VDIs with vdisk, writes at random from four
// goroutines, zeroes a range, and checks with qemu-img check and compare,
// and by reopening.
func TestWriteMatchesQemu(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	for _, tc := range []struct {
		name string
		size int64
		opts map[string]string
	}{
		{"dynamic", 9<<20 + 512, nil},
		{"static", 6 << 20, map[string]string{"static": "on"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "img.vdi")
			if err := image.Create(p, image.CreateOptions{Format: Name, Size: tc.size, Options: tc.opts}); err != nil {
				t.Fatal(err)
			}
			imagetest.Run(t, "qemu-img", "check", p)
			d, err := image.Open(p, image.OpenOptions{Format: Name})
			if err != nil {
				t.Fatal(err)
			}
			if d.Size() != tc.size {
				t.Fatalf("size %d, want %d", d.Size(), tc.size)
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
			imagetest.Run(t, "qemu-img", "check", p)
			imagetest.MustEqual(t, "qemu read", imagetest.QemuRaw(t, p, "vdi"), ref)
			refPath := filepath.Join(t.TempDir(), "ref.raw")
			if err := os.WriteFile(refPath, ref, 0o644); err != nil {
				t.Fatal(err)
			}
			imagetest.Run(t, "qemu-img", "compare", "-f", "vdi", "-F", "raw", p, refPath)
			r, err := image.Check(p, Name, image.CheckOptions{})
			if err != nil || !r.Clean() || r.AllocatedClusters == 0 {
				t.Fatalf("check: %+v, %v", r, err)
			}
			d2, err := image.Open(p, image.OpenOptions{Format: Name, ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer d2.Close()
			imagetest.MustEqual(t, "reopened", imagetest.ReadAll(t, d2), ref)
		})
	}
}

// nopClose keeps a Section from closing the device under it.
type nopClose struct{ blockdev.Device }

func (nopClose) Close() error { return nil }

// TestUnflushedAllocation drops the block map updates of writes that were
// never flushed (as a crash would): the image stays consistent, reads the
// flushed data, and the next allocation reuses the unreferenced space.
func TestUnflushedAllocation(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	p := filepath.Join(t.TempDir(), "img.vdi")
	if err := image.Create(p, image.CreateOptions{Format: Name, Size: 4 << 20}); err != nil {
		t.Fatal(err)
	}
	d, err := image.Open(p, image.OpenOptions{Format: Name})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt([]byte("flushed"), 10); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt([]byte("lost"), 3<<20); err != nil {
		t.Fatal(err)
	}
	// Simulate the crash: release the file without the final Flush.
	d.(*Image).File().Close()
	imagetest.Run(t, "qemu-img", "check", p)
	d, err = image.Open(p, image.OpenOptions{Format: Name})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 7)
	d.ReadAt(buf, 10)
	lost := make([]byte, 4)
	d.ReadAt(lost, 3<<20)
	if string(buf) != "flushed" || string(lost) != "\x00\x00\x00\x00" {
		t.Fatalf("after crash: %q, %q", buf, lost)
	}
	if _, err := d.WriteAt([]byte("again"), 2<<20); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	imagetest.Run(t, "qemu-img", "check", p)
	if st, _ := os.Stat(p); st.Size() != 0x400+2<<20 {
		t.Errorf("file of %d bytes: the unreferenced block was not reused", st.Size())
	}
}

// TestConformance runs the blockdev conformance suite on dynamic, static
// and read-only images.
func TestConformance(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts map[string]string
		ro   bool
	}{{"dynamic", nil, false}, {"static", map[string]string{"static": "on"}, false}, {"read-only", nil, true}} {
		t.Run(tc.name, func(t *testing.T) {
			blockdevtest.Run(t, func(t *testing.T, size int64) blockdev.Device {
				p := filepath.Join(t.TempDir(), "img.vdi")
				if err := image.Create(p, image.CreateOptions{Format: Name, Size: size, Options: tc.opts}); err != nil {
					t.Fatal(err)
				}
				d, err := image.Open(p, image.OpenOptions{Format: Name, ReadOnly: tc.ro})
				if err != nil {
					t.Fatal(err)
				}
				return d
			})
		})
	}
}

// smallImage returns the bytes of a 3 MiB dynamic VDI with two allocated
// blocks.
func smallImage(t testing.TB) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "small.vdi")
	if err := image.Create(p, image.CreateOptions{Format: Name, Size: 3 << 20}); err != nil {
		t.Fatal(err)
	}
	d, err := image.Open(p, image.OpenOptions{Format: Name})
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{2 << 20, 0} {
		if _, err := d.WriteAt([]byte("vdisk vdi test data"), off+100); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestInMemoryFile creates, writes and reopens a VDI whose file is an
// object store's (in memory), and has qemu-img check and compare it.
func TestInMemoryFile(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	mb := imagetest.NewMemBackend(64 << 20)
	if err := image.CreateIn(image.NewBackendFile(mb), image.CreateOptions{Format: Name, Size: 5<<20 + 512}); err != nil {
		t.Fatal(err)
	}
	d, err := image.OpenFile(image.NewBackendFile(mb.Reopen()), image.OpenOptions{Format: Name})
	if err != nil {
		t.Fatal(err)
	}
	ref := make([]byte, d.Size())
	imagetest.RandomWrites(t, d, ref, 11, 30, 700<<10)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "img.vdi")
	mb.WriteFile(t, p)
	imagetest.Run(t, "qemu-img", "check", "-f", "vdi", p)
	imagetest.MustEqual(t, "qemu read", imagetest.QemuRaw(t, p, "vdi"), ref)
}
