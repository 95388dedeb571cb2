package vmdk

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"vdisk/internal/image/imagetest"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
	_ "vdisk/internal/image/raw"
)

// TestWriteStreamOptimized writes stream-optimized images from a raw
// source with data, zero runs and holes, and checks them with qemu-img
// check and compare, and with Open.
func TestWriteStreamOptimized(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	for _, tc := range []struct {
		name  string
		size  int64
		grain int64
	}{{"64k", 9<<20 + 512 + 100, 0}, {"4k", 3 << 20, 4096}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join(dir, "src.raw")
			ref := make([]byte, tc.size)
			r := rand.New(rand.NewPCG(5, 6))
			for off := int64(0); off < tc.size; off += 48 << 10 {
				if r.IntN(3) == 0 {
					continue
				}
				for i := off; i < min(off+int64(r.IntN(48<<10)), tc.size); i++ {
					ref[i] = byte(r.Uint32())
				}
			}
			if err := os.WriteFile(src, ref, 0o644); err != nil {
				t.Fatal(err)
			}
			sd, err := image.Open(src, image.OpenOptions{Format: image.Raw, ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer sd.Close()
			p := filepath.Join(dir, "out.vmdk")
			if err := streamPath(p, sd, tc.grain); err != nil {
				t.Fatal(err)
			}
			imagetest.Run(t, "qemu-img", "check", p)
			padded := make([]byte, (tc.size+511)/512*512)
			copy(padded, ref)
			imagetest.MustEqual(t, "qemu read", imagetest.QemuRaw(t, p, "vmdk"), padded)
			d, err := openPath(p, image.OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if d.CreateType() != StreamOptimized {
				t.Errorf("create type %q", d.CreateType())
			}
			imagetest.MustEqual(t, "vdisk read", imagetest.ReadAll(t, d), padded)
			if err := streamPath(p, sd, 0); !errors.Is(err, os.ErrExist) {
				t.Errorf("stream over an existing file: %v", err)
			}
		})
	}
	t.Run("empty-source", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "empty.vmdk")
		if err := streamPath(p, blockdev.NewMem(4<<20), 0); err != nil {
			t.Fatal(err)
		}
		imagetest.Run(t, "qemu-img", "check", p)
		if st, _ := os.Stat(p); st.Size() > 128<<10 {
			t.Errorf("empty disk took %d bytes", st.Size())
		}
		imagetest.MustEqual(t, "qemu read", imagetest.QemuRaw(t, p, "vmdk"), make([]byte, 4<<20))
	})
}

// TestHostileStream damages the compressed grains of a stream-optimized
// image: reading them fails with an error naming the problem.
func TestHostileStream(t *testing.T) {
	dir := t.TempDir()
	src := blockdev.NewMem(1 << 20)
	if _, err := src.WriteAt([]byte("some data to compress"), 0); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "s.vmdk")
	if err := streamPath(p, src, 0); err != nil {
		t.Fatal(err)
	}
	orig, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	const grain0 = 128 * sectorSize // the first grain marker, after the overhead
	for _, tc := range []struct {
		name   string
		mutate func(b []byte)
		want   string
	}{
		{"size", func(b []byte) { binary.LittleEndian.PutUint32(b[grain0+8:], 1<<30) }, "claims"},
		{"zero-size", func(b []byte) { binary.LittleEndian.PutUint32(b[grain0+8:], 0) }, "claims"},
		{"garbage", func(b []byte) { copy(b[grain0+12:], "not zlib at all") }, "compressed grain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := append([]byte(nil), orig...)
			tc.mutate(b)
			bad := filepath.Join(t.TempDir(), "bad.vmdk")
			os.WriteFile(bad, b, 0o644)
			d, err := openPath(bad, image.OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			_, err = d.ReadAt(make([]byte, 4096), 0)
			if !errors.Is(err, blockdev.ErrCorrupt) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("read: %v (want %q)", err, tc.want)
			}
		})
	}
}

// TestMemFile makes, writes and reads monolithicSparse and
// streamOptimized VMDKs in in-memory Files (as in an object store); a
// monolithicFlat descriptor there names a file, which NoNames refuses,
// and which Names that have it open.
func TestMemFile(t *testing.T) {
	noNames := image.NoNames{Why: "images in an object store name no files"}
	m := imagetest.NewMemFile("sparse.vmdk", nil)
	if err := image.CreateIn(m, image.CreateOptions{Format: Name, Size: 3 << 20, ClusterSize: 4096, Names: noNames}); err != nil {
		t.Fatal(err)
	}
	d, err := image.OpenFile(m, image.OpenOptions{Format: Name, Names: noNames})
	if err != nil {
		t.Fatal(err)
	}
	ref := make([]byte, 3<<20)
	imagetest.RandomWrites(t, d, ref, 9, 20, 200<<10)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if r, err := image.CheckOf(m.Reopen(), Name, image.CheckOptions{}); err != nil || !r.Clean() || r.AllocatedClusters == 0 {
		t.Fatalf("Check %+v, %v", r, err)
	}
	s := imagetest.NewMemFile("stream.vmdk", nil)
	src, err := image.OpenFile(m.Reopen(), image.OpenOptions{Format: Name, ReadOnly: true, Names: noNames})
	if err != nil {
		t.Fatal(err)
	}
	if handled, err := image.StreamIn(s, src, image.CreateOptions{Format: Name, Options: map[string]string{"subformat": StreamOptimized}}); err != nil || !handled {
		t.Fatalf("stream: %v, %v", handled, err)
	}
	src.Close()
	for _, f := range []*imagetest.MemFile{m, s} {
		d, err := image.OpenFile(f.Reopen(), image.OpenOptions{Format: Name, ReadOnly: true, Names: noNames})
		if err != nil {
			t.Fatal(err)
		}
		imagetest.MustEqual(t, f.Name(), imagetest.ReadAll(t, d), ref)
		d.Close()
		if fa, err := image.InfoOf(f.Reopen(), Name); err != nil || fa.VirtualSize != 3<<20 {
			t.Fatalf("Info %+v, %v", fa, err)
		}
	}

	flat := imagetest.NewMemFile("flat.vmdk", nil)
	opt := image.CreateOptions{Format: Name, Size: 1 << 20, Options: map[string]string{"subformat": MonolithicFlat}}
	opt.Names = noNames
	if err := image.CreateIn(flat, opt); !errors.Is(err, image.ErrBackingRefused) || !strings.Contains(err.Error(), noNames.Why) {
		t.Fatalf("create monolithicFlat with NoNames: %v", err)
	}
	names := imagetest.NewMemNames()
	opt.Names = names
	if err := image.CreateIn(flat, opt); err != nil {
		t.Fatal(err)
	}
	if _, ok := names.Files["flat-flat.vmdk"]; !ok {
		t.Fatalf("extents made: %v", names)
	}
	_, err = image.OpenFile(flat.Reopen(), image.OpenOptions{Format: Name, Names: noNames})
	if !errors.Is(err, image.ErrBackingRefused) || !strings.Contains(err.Error(), noNames.Why) || !strings.Contains(err.Error(), "flat-flat.vmdk") {
		t.Fatalf("open monolithicFlat with NoNames: %v", err)
	}
	d, err = image.OpenFile(flat.Reopen(), image.OpenOptions{Format: Name, Names: names})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt([]byte("flat"), 1000); err != nil {
		t.Fatal(err)
	}
	d.Close()
	if got := string(names.Files["flat-flat.vmdk"].Bytes()[1000:1004]); got != "flat" {
		t.Fatalf("extent holds %q", got)
	}
}
