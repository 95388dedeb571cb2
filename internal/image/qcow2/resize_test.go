package qcow2

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
	"vdisk/internal/image/imagetest"
)

// Resize grows an image within its L1 table and past it (a new L1 table);
// qemu-img finds it consistent, reads the old data and zeroes after it,
// and writes at the new end.
func TestResizeMatchesQemu(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	for _, tc := range []struct {
		name     string
		cs       int64
		from, to int64
	}{
		{"within-l1", 0, 100 << 20, 400 << 20},
		{"new-l1", 0, 100 << 20, 6 << 40},
		{"new-l1-4k", 4096, 8 << 20, 3 << 30},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "r.qcow2")
			create(t, p, tc.from, tc.cs, nil, "", "")
			img := openImage(t, p, image.OpenOptions{})
			data := pattern(1<<20, 5)
			if _, err := img.WriteAt(data, tc.from-1<<20); err != nil {
				t.Fatal(err)
			}
			if err := img.Resize(tc.to); err != nil {
				t.Fatalf("Resize: %v", err)
			}
			if img.Size() != tc.to {
				t.Fatalf("size after Resize %d, want %d", img.Size(), tc.to)
			}
			tail := bytes.Repeat([]byte{0xee}, 64<<10)
			if _, err := img.WriteAt(tail, tc.to-int64(len(tail))); err != nil {
				t.Fatalf("write at the new end: %v", err)
			}
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			qemuCheck(t, p)
			if res, err := checkPath(p, image.CheckOptions{}); err != nil || !res.Clean() {
				t.Fatalf("vdisk check: %v %v", res.Messages, err)
			}
			img = openImage(t, p, image.OpenOptions{ReadOnly: true})
			got := make([]byte, 2<<20)
			if _, err := img.ReadAt(got, tc.from-1<<20); err != nil {
				t.Fatal(err)
			}
			imagetest.MustEqual(t, "old data and the zeroes after it", got, append(append([]byte{}, data...), make([]byte, 1<<20)...))
			out := imagetest.Run(t, "qemu-io", "-f", "qcow2", "-r", "-c", fmt.Sprintf("read -P 0xee %d 64k", tc.to-64<<10), p)
			if bytes.Contains([]byte(out), []byte("Pattern verification failed")) {
				t.Fatalf("qemu-io reads the new end differently:\n%s", out)
			}
		})
	}
}

func TestResizeRefuses(t *testing.T) {
	p := filepath.Join(t.TempDir(), "r.qcow2")
	create(t, p, 8<<20, 0, nil, "", "")
	img := openImage(t, p, image.OpenOptions{})
	if err := img.Resize(4 << 20); !errors.Is(err, blockdev.ErrNotSupported) {
		t.Fatalf("shrink: %v, want ErrNotSupported", err)
	}
	if err := img.Resize(8<<20 + 100); err == nil {
		t.Fatal("a size that is not a multiple of 512 was taken")
	}
	ro := openImage(t, p, image.OpenOptions{ReadOnly: true, NoLock: true})
	if err := ro.Resize(16 << 20); !errors.Is(err, blockdev.ErrReadOnly) {
		t.Fatalf("read-only resize: %v, want ErrReadOnly", err)
	}
}
