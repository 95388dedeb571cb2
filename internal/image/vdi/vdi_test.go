package vdi

import (
	"encoding/binary"
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
			d, err := Open(p, image.OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			imagetest.MustEqual(t, "read", imagetest.ReadAll(t, d), want)
			fa, err := Info(p)
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
			if err := Create(p, image.CreateOptions{Format: Name, Size: tc.size, Options: tc.opts}); err != nil {
				t.Fatal(err)
			}
			imagetest.Run(t, "qemu-img", "check", p)
			d, err := Open(p, image.OpenOptions{})
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
			r, err := Check(p, image.CheckOptions{})
			if err != nil || !r.Clean() || r.AllocatedClusters == 0 {
				t.Fatalf("check: %+v, %v", r, err)
			}
			d2, err := Open(p, image.OpenOptions{ReadOnly: true})
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
	if err := Create(p, image.CreateOptions{Format: Name, Size: 4 << 20}); err != nil {
		t.Fatal(err)
	}
	d, err := Open(p, image.OpenOptions{})
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
	d.f.Close()
	imagetest.Run(t, "qemu-img", "check", p)
	d, err = Open(p, image.OpenOptions{})
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
				if err := Create(p, image.CreateOptions{Format: Name, Size: size, Options: tc.opts}); err != nil {
					t.Fatal(err)
				}
				d, err := Open(p, image.OpenOptions{ReadOnly: tc.ro})
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
	if err := Create(p, image.CreateOptions{Format: Name, Size: 3 << 20}); err != nil {
		t.Fatal(err)
	}
	d, err := Open(p, image.OpenOptions{})
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

// TestHostile opens damaged and malicious images: each is refused with an
// error naming the problem.
func TestHostile(t *testing.T) {
	le := binary.LittleEndian
	const bmap = headerSize
	tests := []struct {
		name        string
		mutate      func(b []byte) []byte
		want        string
		corrupt     bool
		unsupported bool
	}{
		{name: "version", mutate: func(b []byte) []byte { le.PutUint32(b[offVersion:], 0x00020000); return b }, want: "version 2.0", unsupported: true},
		{name: "type", mutate: func(b []byte) []byte { le.PutUint32(b[offType:], 9); return b }, want: "image type 9", corrupt: true},
		{name: "differencing", mutate: func(b []byte) []byte { le.PutUint32(b[offType:], typeDiff); return b }, want: "differencing", unsupported: true},
		{name: "sector-size", mutate: func(b []byte) []byte { le.PutUint32(b[offSectorSize:], 4096); return b }, want: "sector size", corrupt: true},
		{name: "block-size", mutate: func(b []byte) []byte { le.PutUint32(b[offBlockSize:], 1000); return b }, want: "block size 1000", corrupt: true},
		{name: "huge-disk", mutate: func(b []byte) []byte { le.PutUint64(b[offDiskSize:], 1<<62); return b }, want: "does not fit", corrupt: true},
		{name: "too-many-blocks", mutate: func(b []byte) []byte { le.PutUint32(b[offBlocks:], 0xffffffff); return b }, want: "more than the VDI limit", corrupt: true},
		{name: "bmap-outside", mutate: func(b []byte) []byte { le.PutUint32(b[offBlocks:], 0x3ffffff0); return b }, want: "outside the file", corrupt: true},
		{name: "data-overlaps-bmap", mutate: func(b []byte) []byte { le.PutUint32(b[offData:], 0x200); return b }, want: "overlaps the block map", corrupt: true},
		{name: "entry-beyond", mutate: func(b []byte) []byte { le.PutUint32(b[bmap:], 77); return b }, want: "beyond the 3 blocks", corrupt: true},
		{name: "entry-shared", mutate: func(b []byte) []byte { copy(b[bmap+4:bmap+8], b[bmap:bmap+4]); return b }, want: "share block", corrupt: true},
		{name: "truncated", mutate: func(b []byte) []byte { return b[:len(b)-5000] }, want: "truncated", corrupt: true},
		{name: "parent-link", mutate: func(b []byte) []byte { b[offUUIDParent] = 1; return b }, want: "parent", unsupported: true},
		{name: "not-vdi", mutate: func(b []byte) []byte { return []byte(strings.Repeat("y", 1024)) }},
		{name: "short", mutate: func(b []byte) []byte { return b[:100] }},
	}
	orig := smallImage(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.mutate(append([]byte(nil), orig...))
			p := filepath.Join(t.TempDir(), "bad.vdi")
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
			d, err := Open(p, image.OpenOptions{ReadOnly: true})
			if err == nil {
				d.Close()
				t.Fatal("opened")
			}
			switch {
			case tc.corrupt && !errors.Is(err, blockdev.ErrCorrupt):
				t.Errorf("error does not wrap ErrCorrupt: %v", err)
			case tc.unsupported && !errors.Is(err, image.ErrUnsupported):
				t.Errorf("error does not wrap ErrUnsupported: %v", err)
			case !tc.corrupt && !tc.unsupported && !errors.Is(err, ErrNotVDI):
				t.Errorf("error does not wrap ErrNotVDI: %v", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

// fuzzReadLimit bounds how much of an opened image FuzzOpen reads.
const fuzzReadLimit = 1 << 20

// FuzzOpen opens arbitrary bytes as a VDI: it must never panic, hang or
// allocate without bound, and what opens must read and describe its
// extents without error.
func FuzzOpen(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*.vdi")
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add(smallImage(f))
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(t.TempDir(), "f.vdi")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		Info(p)
		Check(p, image.CheckOptions{})
		d, err := Open(p, image.OpenOptions{ReadOnly: true})
		if err != nil {
			return
		}
		defer d.Close()
		n := min(d.Size(), fuzzReadLimit)
		buf := make([]byte, n)
		if _, err := d.ReadAt(buf, d.Size()-n); err != nil {
			t.Fatalf("read of an opened image: %v", err)
		}
		if _, err := blockdev.Extents(d, 0, d.Size()); err != nil {
			t.Fatalf("extents of an opened image: %v", err)
		}
	})
}
