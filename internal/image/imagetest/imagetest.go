// Package imagetest holds the helpers the format packages' tests share:
// running qemu-img as the oracle, reading a whole device, comparing
// contents and writing random data into a device and a reference alike.
package imagetest

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"vdisk/internal/blockdev"
)

// NeedTool skips the test when a peer tool is missing; under CI=true, where
// scripts/deps.sh installs every tool, it fails instead.
func NeedTool(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is missing; scripts/deps.sh installs it", name)
		}
		t.Skipf("%s not installed (scripts/deps.sh installs it)", name)
	}
}

// Run runs a command and fails the test on error; it returns the combined
// output.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %q: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// QemuRaw returns the guest content of img (in qemu's format name format)
// as qemu-img sees it.
func QemuRaw(t testing.TB, img, format string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "ref.raw")
	Run(t, "qemu-img", "convert", "-f", format, "-O", "raw", img, out)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ReadAll reads the whole device in pieces of odd sizes.
func ReadAll(t testing.TB, d blockdev.Device) []byte {
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

// MustEqual fails when got and want differ, naming the first difference.
func MustEqual(t testing.TB, what string, got, want []byte) {
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

// RandomWrites writes count random pieces of up to maxLen bytes into d and
// ref alike (half of them 512-aligned).
func RandomWrites(t testing.TB, d blockdev.Device, ref []byte, seed uint64, count int, maxLen int64) {
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
