package qcow2

import (
	"errors"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"

	"vdisk/internal/image"
	"vdisk/internal/image/imagetest"
)

// openBackend opens the qcow2 image in b as the stack does: image.OpenFile
// on a named BackendFile, whose image can name no other file.
func openBackend(b image.Backend, name string, opt image.OpenOptions) (*Image, error) {
	opt.Format = "qcow2"
	opt.Names = image.NoNames{Why: "an image in an object store cannot name other files"}
	d, err := image.OpenFile(image.NewNamedBackendFile(b, name), opt)
	if err != nil {
		return nil, err
	}
	return d.(*Image), nil
}

// A qcow2 image kept in a Backend (an object store's chunks in vdisk) is
// the same file a local one would be: qemu-img checks the bytes the
// Backend holds and reads the guest data back from them.
func TestBackend(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	const size = 8<<20 + 4096
	b := imagetest.NewMemBackend(64 << 20)
	if err := image.CreateIn(image.NewBackendFile(b), image.CreateOptions{Format: "qcow2", Size: size}); err != nil {
		t.Fatalf("CreateIn: %v", err)
	}
	if b.Length() == 0 {
		t.Fatal("CreateIn left the file empty")
	}
	img, err := openBackend(b, "s3://bucket/img", image.OpenOptions{CacheSize: 64 << 10})
	if err != nil {
		t.Fatalf("OpenBackend: %v", err)
	}
	m := &model{img: img, ref: make([]byte, size)}
	r := rand.New(rand.NewPCG(7, 8))
	for k := range 300 {
		m.op(t, r, 256<<10)
		if k%100 == 0 {
			if err := img.Flush(); err != nil {
				t.Fatalf("Flush: %v", err)
			}
		}
	}
	if err := img.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "img.qcow2")
	b.WriteFile(t, p)
	qemuCheck(t, p)
	imagetest.Run(t, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", p, writeFile(t, dir, "ref.raw", m.ref))

	img, err = openBackend(b.Reopen(), "s3://bucket/img", image.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer img.Close()
	imagetest.MustEqual(t, "reopened", imagetest.ReadAll(t, img), m.ref)
}

// A qcow2 image that qemu-img made, put into a Backend, opens there.
func TestBackendQemuImage(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	dir := t.TempDir()
	data := pattern(2<<20, 3)
	src := writeFile(t, dir, "src.raw", data)
	p := filepath.Join(dir, "img.qcow2")
	imagetest.Run(t, "qemu-img", "convert", "-O", "qcow2", src, p)
	b := imagetest.NewMemBackend(16 << 20)
	f := image.NewBackendFile(b)
	if _, err := f.WriteAt(imagetest.ReadFile(t, p), 0); err != nil {
		t.Fatal(err)
	}
	img, err := openBackend(b, "s3://bucket/q", image.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("OpenBackend: %v", err)
	}
	defer img.Close()
	imagetest.MustEqual(t, "qemu's image", imagetest.ReadAll(t, img), data)
}

// Backing files are refused in a Backend: they would name a path on
// whichever host opens the image.
func TestBackendRefusesBacking(t *testing.T) {
	b := imagetest.NewMemBackend(16 << 20)
	err := image.CreateIn(image.NewBackendFile(b), image.CreateOptions{Format: "qcow2", Size: 1 << 20, BackingFile: "base.raw", BackingFormat: "raw"})
	if !errors.Is(err, image.ErrBackingRefused) || !strings.Contains(err.Error(), "base.raw") {
		t.Fatalf("CreateIn with a backing file: %v", err)
	}
	imagetest.NeedTool(t, "qemu-img")
	dir := t.TempDir()
	writeFile(t, dir, "base.raw", make([]byte, 1<<20))
	p := filepath.Join(dir, "top.qcow2")
	imagetest.Run(t, "qemu-img", "create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", p)
	f := image.NewBackendFile(b)
	if _, err := f.WriteAt(imagetest.ReadFile(t, p), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := openBackend(b, "s3://bucket/top", image.OpenOptions{}); !errors.Is(err, image.ErrBackingRefused) || !strings.Contains(err.Error(), "cannot name other files") {
		t.Fatalf("OpenBackend of an image with a backing file: %v", err)
	}
	img, err := openBackend(b.Reopen(), "s3://bucket/top", image.OpenOptions{NoBacking: true, ReadOnly: true})
	if err != nil {
		t.Fatalf("OpenBackend --no-backing: %v", err)
	}
	img.Close()
}

// image.CheckOf on a BackendFile finds what a local check finds in the same bytes: a leak qemu-img
// reports in a file is reported, and repaired, in a Backend too.
func TestCheckOfBackend(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	dir := t.TempDir()
	p := filepath.Join(dir, "leak.qcow2")
	create(t, p, 4<<20, 0, nil, "", "")
	img := openImage(t, p, image.OpenOptions{})
	if _, err := img.WriteAt(pattern(1<<20, 1), 0); err != nil {
		t.Fatal(err)
	}
	// A leak: a cluster counted but referenced by nothing.
	img.mu.Lock()
	_, err := img.alloc(1)
	img.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	b := imagetest.NewMemBackend(64 << 20)
	if _, err := image.NewBackendFile(b).WriteAt(imagetest.ReadFile(t, p), 0); err != nil {
		t.Fatal(err)
	}
	res, err := image.CheckOf(image.NewNamedBackendFile(b, "s3://bucket/leak"), "qcow2", image.CheckOptions{})
	if err != nil || res.Leaks != 1 || res.Corruptions != 0 {
		t.Fatalf("CheckOf: %+v, %v; want one leak", res, err)
	}
	if res, err = image.CheckOf(image.NewNamedBackendFile(b, "s3://bucket/leak"), "qcow2", image.CheckOptions{RepairLeaks: true}); err != nil || res.LeaksFixed != 1 {
		t.Fatalf("CheckOf --repair leaks: %+v, %v", res, err)
	}
	if res, err = image.CheckOf(image.NewNamedBackendFile(b, "s3://bucket/leak"), "qcow2", image.CheckOptions{}); err != nil || !res.Clean() {
		t.Fatalf("after the repair: %+v, %v", res, err)
	}
	b.WriteFile(t, p)
	qemuCheck(t, p)
}
