package qcow2

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
	_ "vdisk/internal/image/raw"
)

// needTool skips the test when a qemu tool is missing.
func needTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("%s not installed (apt-get install qemu-utils)", name)
	}
}

// runCmd runs a command and fails the test on error.
func runCmd(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %q: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// pattern returns size bytes of test content: random, text-like
// (compressible) and zero runs, in 16 KiB pieces, from seed.
func pattern(size int64, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, size)
	for off := int64(0); off < size; off += 16 << 10 {
		piece := b[off:min(off+16<<10, size)]
		switch r.IntN(4) {
		case 0: // zeroes
		case 1:
			for i := range piece {
				piece[i] = byte(r.Uint32())
			}
		default:
			for i := range piece {
				piece[i] = "vdisk qcow2 test "[i%17] + byte(off>>14)
			}
		}
	}
	return b
}

// writeFile writes b to dir/name and returns the path.
func writeFile(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// qemuRaw returns the guest content of img as qemu-img sees it.
func qemuRaw(t *testing.T, img string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "ref.raw")
	runCmd(t, "qemu-img", "convert", "-O", "raw", img, out)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// readAll reads the whole device, in pieces of odd sizes to cross cluster
// boundaries.
func readAll(t *testing.T, d blockdev.Device) []byte {
	t.Helper()
	b := make([]byte, d.Size())
	step := int64(192<<10 + 512)
	for off := int64(0); off < d.Size(); off += step {
		end := min(off+step, d.Size())
		if _, err := d.ReadAt(b[off:end], off); err != nil {
			t.Fatalf("read at %d: %v", off, err)
		}
	}
	return b
}

// mustEqual fails when a and b differ, naming the first difference.
func mustEqual(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d bytes, want %d", what, len(got), len(want))
	}
	if !bytes.Equal(got, want) {
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("%s: first difference at byte %d: %#x, want %#x", what, i, got[i], want[i])
			}
		}
	}
}

// openImage opens path with opt and registers its Close.
func openImage(t *testing.T, path string, opt image.OpenOptions) *Image {
	t.Helper()
	img, err := Open(path, opt)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	t.Cleanup(func() { img.Close() })
	return img
}

// qemuCheck runs qemu-img check, fails on anything but a clean result and
// returns its report.
func qemuCheck(t *testing.T, path string) string {
	t.Helper()
	out, err := exec.Command("qemu-img", "check", path).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img check %s: %v\n%s", path, err, out)
	}
	return string(out)
}
