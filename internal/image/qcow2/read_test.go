package qcow2

import (
	"fmt"
	"path/filepath"
	"testing"

	"vdisk/internal/image"
	"vdisk/internal/image/imagetest"
)

// TestReadQemuImages reads images qemu-img and qemu-io made with every
// layout option and compares them byte for byte with qemu-img convert -O
// raw.
func TestReadQemuImages(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	imagetest.NeedTool(t, "qemu-io")
	const size = 6<<20 + 512
	tests := []struct {
		name    string
		convert []string // qemu-img convert options (-o ...)
		io      []string // qemu-io commands applied afterwards
	}{
		{name: "v3-64k"},
		{name: "v2", convert: []string{"-o", "compat=0.10"}},
		{name: "v2-512", convert: []string{"-o", "compat=0.10,cluster_size=512"}},
		{name: "cluster-512", convert: []string{"-o", "cluster_size=512"}},
		{name: "cluster-4k", convert: []string{"-o", "cluster_size=4k"}},
		{name: "cluster-2M", convert: []string{"-o", "cluster_size=2M"}},
		{name: "refcount-1", convert: []string{"-o", "refcount_bits=1"}},
		{name: "refcount-2", convert: []string{"-o", "refcount_bits=2,cluster_size=4k"}},
		{name: "refcount-8", convert: []string{"-o", "refcount_bits=8"}},
		{name: "refcount-32", convert: []string{"-o", "refcount_bits=32,cluster_size=1k"}},
		{name: "refcount-64", convert: []string{"-o", "refcount_bits=64,cluster_size=512"}},
		{name: "lazy", convert: []string{"-o", "lazy_refcounts=on"}},
		{name: "zlib", convert: []string{"-c"}},
		{name: "zlib-4k", convert: []string{"-c", "-o", "cluster_size=4k"}},
		{name: "zstd", convert: []string{"-c", "-o", "compression_type=zstd"}},
		{name: "zstd-2M", convert: []string{"-c", "-o", "compression_type=zstd,cluster_size=2M"}},
		{name: "v2-zlib", convert: []string{"-c", "-o", "compat=0.10"}},
		{name: "prealloc-metadata", convert: []string{"-o", "preallocation=metadata"}},
		{name: "prealloc-full", convert: []string{"-o", "preallocation=full"}},
		{name: "zero-and-discard", io: []string{"write -z 64k 192k", "write -z -u 1M 128k", "discard 2M 256k", "write -P 0x5a 2100k 3k"}},
		{name: "extl2", convert: []string{"-o", "extended_l2=on"},
			io: []string{"write -P 0x11 5M 2k", "write -P 0x22 5200k 5k", "write -z 4M 2k", "discard 3M 64k"}},
		{name: "extl2-2M", convert: []string{"-o", "extended_l2=on,cluster_size=2M"},
			io: []string{"write -P 0x33 4M 64k", "write -z 4160k 64k"}},
		{name: "extl2-zlib", convert: []string{"-c", "-o", "extended_l2=on"}, io: []string{"write -P 0x44 100k 1k"}},
		{name: "compressed-then-written", convert: []string{"-c"}, io: []string{"write -P 0x66 10k 1k", "write -z 1M 64k"}},
	}
	dir := t.TempDir()
	src := writeFile(t, dir, "src.raw", pattern(size, 1))
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "img.qcow2")
			args := append([]string{"convert", "-O", "qcow2"}, tc.convert...)
			imagetest.Run(t, "qemu-img", append(args, src, p)...)
			for _, c := range tc.io {
				imagetest.Run(t, "qemu-io", "-c", c, p)
			}
			want := qemuRaw(t, p)
			img := openImage(t, p, image.OpenOptions{ReadOnly: true})
			imagetest.MustEqual(t, "read", imagetest.ReadAll(t, img), want)
			if res, err := checkPath(p, image.CheckOptions{}); err != nil || !res.Clean() {
				t.Fatalf("vdisk check of a clean qemu image: %v %v", res.Messages, err)
			}
		})
	}
}

// TestReadBackingChains reads chains with raw and qcow2 bases, relative
// and absolute names, a backing file smaller than the image, and
// --no-backing.
func TestReadBackingChains(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	imagetest.NeedTool(t, "qemu-io")
	dir := t.TempDir()
	const size = 4 << 20
	writeFile(t, dir, "base.raw", pattern(size/2, 2))
	imagetest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", filepath.Join(dir, "mid.qcow2"), fmt.Sprint(size))
	imagetest.Run(t, "qemu-io", "-c", "write -P 0x77 1M 300k", "-c", "write -z 100k 64k", filepath.Join(dir, "mid.qcow2"))
	imagetest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "extended_l2=on", "-b", filepath.Join(dir, "mid.qcow2"), "-F", "qcow2", filepath.Join(dir, "top.qcow2"))
	imagetest.Run(t, "qemu-io", "-c", "write -P 0x88 1100k 3k", "-c", "write -P 0x99 3M 70k", "-c", "discard 1500k 32k", filepath.Join(dir, "top.qcow2"))
	for _, name := range []string{"mid.qcow2", "top.qcow2"} {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(dir, name)
			img := openImage(t, p, image.OpenOptions{ReadOnly: true})
			imagetest.MustEqual(t, "read", imagetest.ReadAll(t, img), qemuRaw(t, p))
		})
	}
	t.Run("no-backing", func(t *testing.T) {
		p := filepath.Join(dir, "top.qcow2")
		img := openImage(t, p, image.OpenOptions{ReadOnly: true, NoBacking: true})
		want := qemuRaw(t, "json:{\"driver\":\"qcow2\",\"backing\":null,\"file\":{\"driver\":\"file\",\"filename\":\""+p+"\"}}")
		imagetest.MustEqual(t, "read", imagetest.ReadAll(t, img), want)
	})
}
