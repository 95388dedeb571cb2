package qcow2

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
	"vdisk/internal/image/imagetest"
)

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
	imagetest.Run(t, "qemu-img", "convert", "-O", "raw", img, out)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// openPath opens the qcow2 image at path as vdisk does (image.Open: a
// locked LocalFile, backing files under image.LocalNames).
func openPath(path string, opt image.OpenOptions) (*Image, error) {
	opt.Format = "qcow2"
	d, err := image.Open(path, opt)
	if err != nil {
		return nil, err
	}
	return d.(*Image), nil
}

// createPath makes a new qcow2 image at path (image.Create).
func createPath(path string, opt image.CreateOptions) error {
	opt.Format = "qcow2"
	return image.Create(path, opt)
}

// checkPath checks the qcow2 image at path (image.Check).
func checkPath(path string, opt image.CheckOptions) (*image.CheckResult, error) {
	return image.Check(path, "qcow2", opt)
}

// infoPath describes the qcow2 image at path (image.Info).
func infoPath(path string) (*image.Facts, error) { return image.Info(path, "qcow2") }

// openImage opens path with opt and registers its Close.
func openImage(t *testing.T, path string, opt image.OpenOptions) *Image {
	t.Helper()
	img, err := openPath(path, opt)
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

// The raw format, as a backing file recorded as raw needs it, stands in
// here for image/raw: the file's own bytes (image.RawFile).
func init() {
	image.Register(image.Format{Name: image.Raw, OpenFile: func(f image.File, opt image.OpenOptions) (blockdev.Device, error) {
		rf, ok := f.(image.RawFile)
		if !ok {
			return nil, fmt.Errorf("%s: not a raw file", f.Name())
		}
		return rf.RawDevice()
	}})
}
