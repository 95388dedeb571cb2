package qcow2

import (
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"

	"vdisk/internal/image"
	"vdisk/internal/image/imagetest"
)

// A qcow2 image kept in a Backend (an object store's chunks in vdisk) is
// the same file a local one would be: qemu-img checks the bytes the
// Backend holds and reads the guest data back from them.
func TestBackend(t *testing.T) {
	needTool(t, "qemu-img")
	const size = 8<<20 + 4096
	b := imagetest.NewMemBackend(64 << 20)
	if err := CreateBackend(b, image.CreateOptions{Format: "qcow2", Size: size}); err != nil {
		t.Fatalf("CreateBackend: %v", err)
	}
	if b.Length() == 0 {
		t.Fatal("CreateBackend left the file empty")
	}
	img, err := OpenBackend(b, "s3://bucket/img", image.OpenOptions{CacheSize: 64 << 10})
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
	runCmd(t, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", p, writeFile(t, dir, "ref.raw", m.ref))

	img, err = OpenBackend(b.Reopen(), "s3://bucket/img", image.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer img.Close()
	mustEqual(t, "reopened", readAll(t, img), m.ref)
}

// A qcow2 image that qemu-img made, put into a Backend, opens there.
func TestBackendQemuImage(t *testing.T) {
	needTool(t, "qemu-img")
	dir := t.TempDir()
	data := pattern(2<<20, 3)
	src := writeFile(t, dir, "src.raw", data)
	p := filepath.Join(dir, "img.qcow2")
	runCmd(t, "qemu-img", "convert", "-O", "qcow2", src, p)
	b := imagetest.NewMemBackend(16 << 20)
	f := image.NewBackendFile(b)
	if _, err := f.WriteAt(imagetest.ReadFile(t, p), 0); err != nil {
		t.Fatal(err)
	}
	img, err := OpenBackend(b, "s3://bucket/q", image.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("OpenBackend: %v", err)
	}
	defer img.Close()
	mustEqual(t, "qemu's image", readAll(t, img), data)
}

// Backing files are refused in a Backend: they would name a path on
// whichever host opens the image.
func TestBackendRefusesBacking(t *testing.T) {
	b := imagetest.NewMemBackend(16 << 20)
	err := CreateBackend(b, image.CreateOptions{Format: "qcow2", Size: 1 << 20, BackingFile: "base.raw", BackingFormat: "raw"})
	if err == nil || !strings.Contains(err.Error(), "backing file") {
		t.Fatalf("CreateBackend with a backing file: %v", err)
	}
	needTool(t, "qemu-img")
	dir := t.TempDir()
	writeFile(t, dir, "base.raw", make([]byte, 1<<20))
	p := filepath.Join(dir, "top.qcow2")
	runCmd(t, "qemu-img", "create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", p)
	f := image.NewBackendFile(b)
	if _, err := f.WriteAt(imagetest.ReadFile(t, p), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenBackend(b, "s3://bucket/top", image.OpenOptions{}); err == nil || !strings.Contains(err.Error(), "cannot have one") {
		t.Fatalf("OpenBackend of an image with a backing file: %v", err)
	}
	img, err := OpenBackend(b.Reopen(), "s3://bucket/top", image.OpenOptions{NoBacking: true, ReadOnly: true})
	if err != nil {
		t.Fatalf("OpenBackend --no-backing: %v", err)
	}
	img.Close()
}

// CheckBackend finds what Check finds in the same bytes: a leak qemu-img
// reports in a file is reported, and repaired, in a Backend too.
func TestCheckBackend(t *testing.T) {
	needTool(t, "qemu-img")
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
	res, err := CheckBackend(b, "s3://bucket/leak", image.CheckOptions{})
	if err != nil || res.Leaks != 1 || res.Corruptions != 0 {
		t.Fatalf("CheckBackend: %+v, %v; want one leak", res, err)
	}
	if res, err = CheckBackend(b, "s3://bucket/leak", image.CheckOptions{RepairLeaks: true}); err != nil || res.LeaksFixed != 1 {
		t.Fatalf("CheckBackend --repair leaks: %+v, %v", res, err)
	}
	if res, err = CheckBackend(b, "s3://bucket/leak", image.CheckOptions{}); err != nil || !res.Clean() {
		t.Fatalf("after the repair: %+v, %v", res, err)
	}
	b.WriteFile(t, p)
	qemuCheck(t, p)
}
