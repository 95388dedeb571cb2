package vhdx

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"vdisk/internal/blockdev"
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

// qemuRaw returns the guest content of img (qemu format fmt) as qemu-img
// sees it.
func qemuRaw(t *testing.T, img, format string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "ref.raw")
	runCmd(t, "qemu-img", "convert", "-f", format, "-O", "raw", img, out)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// readAll reads the whole device in pieces of odd sizes.
func readAll(t *testing.T, d blockdev.Device) []byte {
	t.Helper()
	b := make([]byte, d.Size())
	step := int64(192<<10 + 512 + 3)
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

// randomWrites writes count random pieces of up to maxLen bytes into d and
// ref alike, and returns ref.
func randomWrites(t *testing.T, d blockdev.Device, ref []byte, seed uint64, count int, maxLen int64) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 7))
	size := int64(len(ref))
	for range count {
		n := 1 + r.Int64N(min(maxLen, size))
		off := r.Int64N(size - n + 1)
		if r.IntN(2) == 0 {
			off &^= 511
			n = min((n+511)&^511, size-off)
		}
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		if _, err := d.WriteAt(b, off); err != nil {
			t.Fatalf("write %d+%d: %v", off, n, err)
		}
		copy(ref[off:], b)
	}
}

// blockdev0 returns d as a blockdev.Device (for helpers that take one).
func blockdev0(d *Image) blockdev.Device { return d }
