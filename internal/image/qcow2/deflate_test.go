package qcow2

import (
	"bytes"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"vdisk/internal/image"
	"vdisk/internal/image/imagetest"
)

// WriteCompressed packs compressed clusters as qemu-img convert -c does:
// qemu-img check finds the refcounts of shared host clusters right, and
// qemu-img reads the data back, for both compression types, with refcount
// widths down to 1 bit (no sharing possible) and odd image sizes (a short
// last cluster).
func TestWriteCompressedMatchesQemu(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	tests := []struct {
		name string
		cs   int64
		size int64
		opts map[string]string
	}{
		{name: "zlib-64k", size: 4 << 20},
		{name: "zstd-64k", size: 4 << 20, opts: map[string]string{"compression_type": "zstd"}},
		{name: "zlib-4k-refcount-1", cs: 4096, size: 1<<20 + 4096, opts: map[string]string{"refcount_bits": "1"}},
		{name: "zlib-512-short-tail", cs: 512, size: 256<<10 + 1536},
		{name: "zstd-2M-short-tail", cs: 2 << 20, size: 5<<20 + 512, opts: map[string]string{"compression_type": "zstd"}},
		{name: "v2", size: 2 << 20, opts: map[string]string{"compat": "0.10"}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "c.qcow2")
			create(t, p, tc.size, tc.cs, tc.opts, "", "")
			img := openImage(t, p, image.OpenOptions{})
			ref := pattern(tc.size, uint64(i))
			cs := img.cs
			var wg sync.WaitGroup
			for g := range int64(4) {
				wg.Go(func() {
					for off := g * cs; off < tc.size; off += 4 * cs {
						c := ref[off:min(off+cs, tc.size)]
						if bytes.Count(c, []byte{0}) == len(c) {
							continue
						}
						if err := img.WriteCompressed(c, off); err != nil {
							t.Errorf("WriteCompressed at %d: %v", off, err)
							return
						}
					}
				})
			}
			wg.Wait()
			first := int64(bytes.IndexFunc(ref, func(r rune) bool { return r != 0 })) / cs * cs
			if err := img.WriteCompressed(ref[first:first+cs], first); err == nil || !strings.Contains(err.Error(), "allocated already") {
				t.Errorf("a second compressed write at %d: %v, want refused", first, err)
			}
			imagetest.MustEqual(t, "read before close", imagetest.ReadAll(t, img), ref)
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			out := qemuCheck(t, p)
			if !strings.Contains(out, "compressed clusters") {
				t.Errorf("qemu-img check sees no compressed clusters:\n%s", out)
			}
			if res, err := checkPath(p, image.CheckOptions{}); err != nil || !res.Clean() {
				t.Fatalf("vdisk check: %v %v", res.Messages, err)
			}
			imagetest.MustEqual(t, "qemu-img read", qemuRaw(t, p), ref)
			// Overwriting compressed clusters afterwards releases their
			// shares of the host clusters.
			img = openImage(t, p, image.OpenOptions{})
			over := bytes.Repeat([]byte{0x5a}, int(min(3*cs, tc.size)))
			if _, err := img.WriteAt(over, 0); err != nil {
				t.Fatal(err)
			}
			copy(ref, over)
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			qemuCheck(t, p)
			imagetest.MustEqual(t, "after overwriting", qemuRaw(t, p), ref)
		})
	}
}

func TestWriteCompressedRefusesPartialClusters(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.qcow2")
	create(t, p, 1<<20, 0, nil, "", "")
	img := openImage(t, p, image.OpenOptions{})
	defer img.Close()
	if err := img.WriteCompressed(make([]byte, 4096), 0); err == nil {
		t.Fatal("a compressed write of part of a cluster succeeded")
	}
	if err := img.WriteCompressed(make([]byte, 64<<10), 512); err == nil {
		t.Fatal("an unaligned compressed write succeeded")
	}
	if err := img.WriteCompressed(make([]byte, 64<<10), 1<<20); err == nil {
		t.Fatal("a compressed write past the end succeeded")
	}
}
