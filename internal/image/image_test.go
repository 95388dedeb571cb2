package image_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/blockdev/blockdevtest"
	"vdisk/internal/image"
	_ "vdisk/internal/image/qcow2"
	_ "vdisk/internal/image/raw"
)

// TestProbe checks probing: qcow2 by its magic, raw for anything else.
func TestProbe(t *testing.T) {
	dir := t.TempDir()
	q := filepath.Join(dir, "a.qcow2")
	if err := image.Create(q, image.CreateOptions{Format: "qcow2", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, image.Raw},
		{"zeroes", make([]byte, 8192), image.Raw},
		{"short magic", []byte("QFI"), image.Raw},
		{"qcow magic, version 9", []byte("QFI\xfb\x00\x00\x00\x09"), image.Raw},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name)
			if err := os.WriteFile(p, tc.data, 0o644); err != nil {
				t.Fatal(err)
			}
			if got, err := image.Probe(p); err != nil || got != tc.want {
				t.Fatalf("Probe = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	if got, err := image.Probe(q); err != nil || got != "qcow2" {
		t.Fatalf("Probe(qcow2) = %q, %v", got, err)
	}
	if _, err := image.Probe(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Probe of a missing file: %v", err)
	}
}

// TestExplicitFormatWins opens a qcow2 file as raw: it is served as its
// bytes, never reinterpreted.
func TestExplicitFormatWins(t *testing.T) {
	p := filepath.Join(t.TempDir(), "a.qcow2")
	if err := image.Create(p, image.CreateOptions{Format: "qcow2", Size: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	d, err := image.Open(p, image.OpenOptions{Format: image.Raw, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Size() != st.Size() {
		t.Fatalf("raw open of a qcow2 file: size %d, want the file's %d", d.Size(), st.Size())
	}
	hdr := make([]byte, 4)
	if _, err := d.ReadAt(hdr, 0); err != nil || string(hdr) != "QFI\xfb" {
		t.Fatalf("raw open does not show the file's bytes: %q %v", hdr, err)
	}
	q, err := image.Open(p, image.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if q.Size() != 64<<20 {
		t.Fatalf("probed open: size %d", q.Size())
	}
	if _, err := image.Open(p, image.OpenOptions{Format: "nosuch"}); !errors.Is(err, image.ErrUnknownFormat) {
		t.Fatalf("unknown format: %v", err)
	}
}

// TestRawCreateInfo creates a raw image and describes it.
func TestRawCreateInfo(t *testing.T) {
	p := filepath.Join(t.TempDir(), "a.img")
	if err := image.Create(p, image.CreateOptions{Format: image.Raw, Size: 3 << 20}); err != nil {
		t.Fatal(err)
	}
	if err := image.Create(p, image.CreateOptions{Format: image.Raw, Size: 1 << 20}); err == nil {
		t.Fatal("create over an existing image succeeded")
	}
	if err := image.Create(p+"2", image.CreateOptions{Format: image.Raw, Size: 1 << 20, BackingFile: p}); !errors.Is(err, image.ErrUnsupported) {
		t.Fatalf("raw with a backing file: %v", err)
	}
	fa, err := image.Info(p, "")
	if err != nil || fa.Format != image.Raw || fa.VirtualSize != 3<<20 || fa.DiskSize > 64<<10 {
		t.Fatalf("info %+v %v", fa, err)
	}
	if _, err := image.Check(p, "", image.CheckOptions{}); !errors.Is(err, image.ErrNoCheck) {
		t.Fatalf("check of raw: %v", err)
	}
}

// TestRawConformance runs the Device suite on raw images opened through
// the registry.
func TestRawConformance(t *testing.T) {
	blockdevtest.Run(t, func(t *testing.T, size int64) blockdev.Device {
		p := filepath.Join(t.TempDir(), "a.img")
		if err := image.Create(p, image.CreateOptions{Format: image.Raw, Size: size}); err != nil {
			t.Fatal(err)
		}
		d, err := image.Open(p, image.OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return d
	})
}
