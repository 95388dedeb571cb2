package iso

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/blockdev/blockdevtest"
	"vdisk/internal/image"
)

// makeISO returns a minimal ISO 9660 image of size bytes (a multiple of
// 2048): an empty system area, a primary volume descriptor and a
// terminator.
func makeISO(size int64, label string) []byte {
	b := make([]byte, size)
	pvd := b[firstDescriptor:]
	pvd[0], pvd[6] = typePrimary, 1
	copy(pvd[1:], magic)
	copy(pvd[40:72], label+strings.Repeat(" ", 32-len(label)))
	binary.LittleEndian.PutUint32(pvd[80:], uint32(size/BlockSize))
	binary.BigEndian.PutUint32(pvd[84:], uint32(size/BlockSize))
	binary.LittleEndian.PutUint16(pvd[128:], BlockSize)
	binary.BigEndian.PutUint16(pvd[130:], BlockSize)
	term := b[firstDescriptor+BlockSize:]
	term[0], term[6] = typeTerminator, 1
	copy(term[1:], magic)
	return b
}

// genISO makes an ISO with genisoimage from a directory of files and
// returns its path.
func genISO(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("genisoimage"); err != nil {
		t.Skip("genisoimage not installed (apt-get install genisoimage)")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.MkdirAll(filepath.Join(src, "sub"), 0o755)
	os.WriteFile(filepath.Join(src, "hello.txt"), []byte("hello from vdisk\n"), 0o644)
	os.WriteFile(filepath.Join(src, "sub", "big.bin"), bytes.Repeat([]byte("0123456789abcdef"), 40000), 0o644)
	p := filepath.Join(dir, "img.iso")
	out, err := exec.Command("genisoimage", "-quiet", "-R", "-J", "-V", "VDISKTEST", "-o", p, src).CombinedOutput()
	if err != nil {
		t.Fatalf("genisoimage: %v\n%s", err, out)
	}
	return p
}

// TestReadGenisoimage reads an ISO made by genisoimage: the device is the
// file, byte for byte, read-only with 2048-byte blocks, and its files'
// bytes are where the image has them.
func TestReadGenisoimage(t *testing.T) {
	p := genISO(t)
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := image.Probe(p); err != nil || got != Name {
		t.Fatalf("probe: %q, %v", got, err)
	}
	if !probe(want[:MagicOffset+5]) || image.ProbeBytes(want[:MagicOffset+5]) != Name {
		t.Fatal("probe of the first 32 KiB + 6 bytes does not find the ISO")
	}
	d, err := image.Open(p, image.OpenOptions{Format: Name})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Size() != int64(len(want)) {
		t.Fatalf("size %d, file %d", d.Size(), len(want))
	}
	got := make([]byte, d.Size())
	if _, err := d.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("device differs from the file")
	}
	if !bytes.Contains(got, []byte("hello from vdisk\n")) {
		t.Fatal("file content not in the image")
	}
	in := blockdev.InfoOf(d)
	if in.LogicalBlockSize != BlockSize || !in.ReadOnly {
		t.Fatalf("info %+v", in)
	}
	if _, err := d.WriteAt([]byte{1}, 0); !errors.Is(err, blockdev.ErrReadOnly) {
		t.Fatalf("write: %v", err)
	}
	if v := d.(*Image).Volume(); v.ID != "VDISKTEST" || v.BlockSize != BlockSize || v.Size() != int64(len(want)) {
		t.Fatalf("volume %+v", v)
	}
	fa, err := image.Info(p, Name)
	if err != nil || fa.VirtualSize != int64(len(want)) || fa.ClusterSize != BlockSize || fa.Format != Name {
		t.Fatalf("Info %+v, %v", fa, err)
	}
	if r, err := image.Check(p, Name, image.CheckOptions{}); err != nil || !r.Clean() {
		t.Fatalf("Check %+v, %v", r, err)
	}
}

// TestPadding serves a file whose size is not a whole number of blocks:
// the device is rounded up and the tail reads as zeroes.
func TestPadding(t *testing.T) {
	b := append(makeISO(40*BlockSize, "PAD"), "tail"...)
	p := filepath.Join(t.TempDir(), "pad.iso")
	os.WriteFile(p, b, 0o644)
	d, err := openPath(p, image.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Size() != 41*BlockSize {
		t.Fatalf("size %d", d.Size())
	}
	got := make([]byte, BlockSize)
	if _, err := d.ReadAt(got, 40*BlockSize); err != nil {
		t.Fatal(err)
	}
	if string(got[:4]) != "tail" || !blockdev.IsZero(got[4:]) {
		t.Fatalf("tail block %q", got[:8])
	}
	ext, err := d.Extents(40*BlockSize+512, 1536)
	if err != nil || len(ext) == 0 || ext[0].Off != 40*BlockSize+512 {
		t.Fatalf("extents %v, %v", ext, err)
	}
}

// TestHostile refuses images that are not ISO 9660 or are damaged, naming
// the problem.
func TestHostile(t *testing.T) {
	const pvd = firstDescriptor
	tests := []struct {
		name    string
		mutate  func(b []byte) []byte
		want    string
		corrupt bool
	}{
		{"no-magic", func(b []byte) []byte { b[pvd+1] = 'X'; return b }, "not an ISO", false},
		{"short", func(b []byte) []byte { return b[:20000] }, "too short", false},
		{"block-size", func(b []byte) []byte { binary.LittleEndian.PutUint16(b[pvd+128:], 3000); return b }, "logical block size 3000", true},
		{"block-size-endian", func(b []byte) []byte { binary.BigEndian.PutUint16(b[pvd+130:], 1024); return b }, "big-endian", true},
		{"truncated", func(b []byte) []byte { return b[:30*BlockSize] }, "truncated", true},
		{"no-terminator", func(b []byte) []byte { b[pvd+BlockSize] = 2; return b }, "terminator", true},
		{"no-primary", func(b []byte) []byte { b[pvd] = 2; return b }, "no primary volume descriptor", true},
		{"bad-next", func(b []byte) []byte { b[pvd+BlockSize+1] = 'Z'; return b }, "no CD001", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "bad.iso")
			os.WriteFile(p, tc.mutate(makeISO(40*BlockSize, "BAD")), 0o644)
			_, err := openPath(p, image.OpenOptions{})
			if err == nil {
				t.Fatal("opened")
			}
			if tc.corrupt != errors.Is(err, blockdev.ErrCorrupt) || (!tc.corrupt && !errors.Is(err, ErrNotISO)) {
				t.Errorf("error kind: %v", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
			if r, err := image.Check(p, Name, image.CheckOptions{}); err != nil || r.Clean() {
				t.Errorf("Check: %+v, %v", r, err)
			}
		})
	}
}

// TestConformance runs the blockdev conformance suite on an ISO image.
func TestConformance(t *testing.T) {
	blockdevtest.Run(t, func(t *testing.T, size int64) blockdev.Device {
		p := filepath.Join(t.TempDir(), "c.iso")
		if err := os.WriteFile(p, makeISO(size, "CONF"), 0o644); err != nil {
			t.Fatal(err)
		}
		d, err := openPath(p, image.OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return d
	})
}

// FuzzOpen opens arbitrary bytes as an ISO: never a panic, and what opens
// reads. Seeds: a minimal image made here (genisoimage's smallest output is
// too large to keep in testdata).
func FuzzOpen(f *testing.F) {
	f.Add(makeISO(20*BlockSize, "FUZZ"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(t.TempDir(), "f.iso")
		os.WriteFile(p, b, 0o644)
		image.Info(p, Name)
		image.Check(p, Name, image.CheckOptions{})
		d, err := openPath(p, image.OpenOptions{})
		if err != nil {
			return
		}
		defer d.Close()
		buf := make([]byte, d.Size())
		if _, err := d.ReadAt(buf, 0); err != nil {
			t.Fatal(err)
		}
	})
}

// openPath opens the ISO image at path.
func openPath(path string, opt image.OpenOptions) (*Image, error) {
	f, err := image.OpenLocal(path, image.LocalOptions{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	img, err := Open(f, opt)
	if err != nil {
		f.Close()
	}
	return img, err
}
