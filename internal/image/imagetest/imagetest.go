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

// CheckHoleExtents writes a little data at 2 MiB+100 into d (at least 4 MiB,
// freshly created) and checks its Extents: they cover the device
// contiguously, the written byte is data, and the byte at 1 MiB and the
// last byte read as zeroes (byte 0 may share a file system block with
// metadata). Formats whose blocks are all allocated in a sparse file (fixed,
// static, flat) pass only if they report the file's holes.
func CheckHoleExtents(t testing.TB, d blockdev.Device) {
	t.Helper()
	const data = 2<<20 + 100
	if _, err := d.WriteAt(make([]byte, 8192), 2<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt([]byte("data"), data); err != nil {
		t.Fatal(err)
	}
	size := d.Size()
	ext, err := blockdev.Extents(d, 0, size)
	if err != nil {
		t.Fatal(err)
	}
	at := int64(0)
	for _, e := range ext {
		if e.Off != at || e.Len <= 0 {
			t.Fatalf("extents not contiguous at %d: %v", at, ext)
		}
		at += e.Len
	}
	if at != size {
		t.Fatalf("extents end at %d, size %d", at, size)
	}
	flags := func(off int64) blockdev.ExtentFlags {
		for _, e := range ext {
			if e.Off <= off && off < e.Off+e.Len {
				return e.Flags
			}
		}
		return 0
	}
	if flags(data) != 0 || flags(1<<20)&blockdev.ExtentZero == 0 || flags(size-1)&blockdev.ExtentZero == 0 {
		t.Fatalf("extents %v", ext)
	}
}

// ReadFile returns the bytes of the file at path.
func ReadFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
