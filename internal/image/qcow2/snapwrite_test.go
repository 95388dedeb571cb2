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

// Snapshots vdisk takes, applies and deletes are qemu's: qemu-img lists
// them, checks the image clean after every step, and reads the snapshot's
// disk after qemu-img snapshot -a; a snapshot qemu-img took, vdisk applies
// and deletes.
func TestSnapshotsMatchQemu(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	for _, tc := range []struct {
		name string
		cs   int64
		opts map[string]string
	}{
		{name: "v3-64k"},
		{name: "v2-4k", cs: 4096, opts: map[string]string{"compat": "0.10"}},
		{name: "extl2", opts: map[string]string{"extended_l2": "on"}},
		{name: "lazy-512", cs: 512, opts: map[string]string{"lazy_refcounts": "on"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "s.qcow2")
			const size = 3 << 20
			create(t, p, size, tc.cs, tc.opts, "", "")
			img := openImage(t, p, image.OpenOptions{CacheSize: 64 << 10})
			m := &model{img: img, ref: make([]byte, size)}
			r := rand.New(rand.NewPCG(3, 4))
			for range 80 {
				m.op(t, r, 96<<10)
			}
			first := append([]byte(nil), m.ref...)
			if _, err := img.CreateSnapshot("first"); err != nil {
				t.Fatalf("CreateSnapshot: %v", err)
			}
			if _, err := img.CreateSnapshot("first"); err == nil {
				t.Fatal("a second snapshot named first was taken")
			}
			for range 80 {
				m.op(t, r, 96<<10)
			}
			second := append([]byte(nil), m.ref...)
			if _, err := img.CreateSnapshot("second"); err != nil {
				t.Fatalf("CreateSnapshot second: %v", err)
			}
			for range 40 {
				m.op(t, r, 96<<10)
			}
			imagetest.MustEqual(t, "active after two snapshots", imagetest.ReadAll(t, img), m.ref)
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			qemuCheck(t, p)
			if res, err := checkPath(p, image.CheckOptions{}); err != nil || !res.Clean() {
				t.Fatalf("vdisk check: %v %v", res.Messages, err)
			}
			list := imagetest.Run(t, "qemu-img", "snapshot", "-l", p)
			if !strings.Contains(list, "first") || !strings.Contains(list, "second") {
				t.Fatalf("qemu-img snapshot -l:\n%s", list)
			}
			imagetest.MustEqual(t, "active, read by qemu", qemuRaw(t, p), m.ref)

			// qemu applies vdisk's snapshot.
			q := filepath.Join(dir, "q.qcow2")
			imagetest.Run(t, "cp", p, q)
			imagetest.Run(t, "qemu-img", "snapshot", "-a", "second", q)
			qemuCheck(t, q)
			imagetest.MustEqual(t, "vdisk's snapshot applied by qemu", qemuRaw(t, q), second)

			// vdisk applies and deletes.
			img = openImage(t, p, image.OpenOptions{})
			if err := img.ApplySnapshot("first"); err != nil {
				t.Fatalf("ApplySnapshot: %v", err)
			}
			imagetest.MustEqual(t, "after applying first", imagetest.ReadAll(t, img), first)
			if err := img.DeleteSnapshot("1"); err != nil { // by id
				t.Fatalf("DeleteSnapshot: %v", err)
			}
			if err := img.DeleteSnapshot("first"); !errors.Is(err, ErrNoSnapshot) {
				t.Fatalf("deleting first twice: %v, want ErrNoSnapshot", err)
			}
			m.img, m.ref = img, first
			for range 40 {
				m.op(t, r, 96<<10)
			}
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			qemuCheck(t, p)
			imagetest.MustEqual(t, "writes after apply and delete", qemuRaw(t, p), m.ref)
			if list := imagetest.Run(t, "qemu-img", "snapshot", "-l", p); strings.Contains(list, "first") || !strings.Contains(list, "second") {
				t.Fatalf("after deleting first, qemu-img snapshot -l:\n%s", list)
			}
			img = openImage(t, p, image.OpenOptions{})
			if err := img.ApplySnapshot("second"); err != nil {
				t.Fatal(err)
			}
			if err := img.DeleteSnapshot("second"); err != nil {
				t.Fatal(err)
			}
			imagetest.MustEqual(t, "second applied, then deleted", imagetest.ReadAll(t, img), second)
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			out := qemuCheck(t, p)
			if res, err := checkPath(p, image.CheckOptions{}); err != nil || !res.Clean() {
				t.Fatalf("vdisk check at the end: %v %v\n%s", res.Messages, err, out)
			}
			imagetest.MustEqual(t, "the end, read by qemu", qemuRaw(t, p), second)
		})
	}
}

// A snapshot qemu-img took is applied and deleted by vdisk.
func TestSnapshotFromQemu(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	dir := t.TempDir()
	base := pattern(2<<20, 9)
	p := filepath.Join(dir, "q.qcow2")
	imagetest.Run(t, "qemu-img", "convert", "-O", "qcow2", writeFile(t, dir, "b.raw", base), p)
	imagetest.Run(t, "qemu-img", "snapshot", "-c", "qsnap", p)
	imagetest.Run(t, "qemu-io", "-c", "write -P 0x99 0 1M", p)
	img := openImage(t, p, image.OpenOptions{})
	snaps, err := img.Snapshots()
	if err != nil || len(snaps) != 1 || snaps[0].Name != "qsnap" {
		t.Fatalf("Snapshots: %+v, %v", snaps, err)
	}
	if err := img.ApplySnapshot("qsnap"); err != nil {
		t.Fatal(err)
	}
	if err := img.DeleteSnapshot("qsnap"); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, p)
	imagetest.MustEqual(t, "qemu's snapshot applied by vdisk", qemuRaw(t, p), base)
	if list := imagetest.Run(t, "qemu-img", "snapshot", "-l", p); strings.Contains(list, "qsnap") {
		t.Fatalf("snapshot still listed:\n%s", list)
	}
}
