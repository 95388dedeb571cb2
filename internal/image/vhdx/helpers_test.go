package vhdx

import (
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
	"vdisk/internal/image/imagetest"
)

// blockdev0 returns d as a blockdev.Device (for helpers that take one).
func blockdev0(d *Image) blockdev.Device { return d }

// The package opens Files; most tests work on paths, through the
// registry.

func openPath(path string, opt image.OpenOptions) (*Image, error) {
	opt.Format = Name
	d, err := image.Open(path, opt)
	if err != nil {
		return nil, err
	}
	return d.(*Image), nil
}

func createPath(path string, opt image.CreateOptions) error {
	opt.Format = Name
	return image.Create(path, opt)
}

func infoPath(path string) (*image.Facts, error) { return image.Info(path, Name) }

func checkPath(path string, opt image.CheckOptions) (*image.CheckResult, error) {
	return image.Check(path, Name, opt)
}

// loadPath loads the image at path read-only, without its parent.
func loadPath(t testing.TB, path string) *Image {
	t.Helper()
	f, err := image.OpenLocal(path, image.LocalOptions{ReadOnly: true, NoLock: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, bat, err := load(f, true)
	if err == nil {
		err = img.serve(bat, true, nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// newMemFile is an in-memory image.File holding b.
func newMemFile(b []byte) *imagetest.MemFile { return imagetest.NewMemFile("mem.vhdx", b) }
