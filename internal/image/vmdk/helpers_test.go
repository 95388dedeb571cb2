package vmdk

import (
	"errors"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

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

// streamPath streams src into a new streamOptimized VMDK at path.
func streamPath(path string, src blockdev.Device, grain int64) error {
	handled, err := image.Stream(path, src, image.CreateOptions{Format: Name, ClusterSize: grain,
		Options: map[string]string{"subformat": StreamOptimized}})
	if err == nil && !handled {
		err = errors.New("not streamed")
	}
	return err
}
