// Package raw is the raw image format: the file's bytes are the disk's
// bytes. It registers itself with the image registry. A local raw image
// is served as a blockdev.File (pread and pwrite in parallel, without
// locks of its own), one in an object store as the store's Device.
package raw

import (
	"fmt"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

func init() {
	image.Register(image.Format{
		Name:       image.Raw,
		OpenFile:   Open,
		CreateFile: Create,
		InfoFile:   Info,
	})
}

// Open serves the raw image in f. A raw image never names another file.
func Open(f image.File, opt image.OpenOptions) (blockdev.Device, error) {
	dev, err := image.AsDevice(f, opt.ReadOnly)
	if err != nil {
		return nil, fmt.Errorf("raw: %w", err)
	}
	return dev, nil
}

// Create makes f, an empty file, a sparse raw image of opt.Size bytes.
// Raw images have no backing file and no clusters.
func Create(f image.File, opt image.CreateOptions) error {
	if opt.BackingFile != "" {
		return fmt.Errorf("raw: a raw image cannot have a backing file: %w", image.ErrUnsupported)
	}
	if opt.ClusterSize != 0 || len(opt.Options) > 0 {
		return fmt.Errorf("raw: cluster size and format options do not apply to raw images: %w", image.ErrUnsupported)
	}
	if err := f.Truncate(opt.Size); err != nil {
		return fmt.Errorf("raw: create %s: %w", f.Name(), err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("raw: create %s: %w", f.Name(), err)
	}
	return nil
}

// Info describes the raw image in f.
func Info(f image.File) (*image.Facts, error) {
	n, err := f.Size()
	if err != nil {
		return nil, fmt.Errorf("raw: %w", err)
	}
	return &image.Facts{Filename: f.Name(), Format: image.Raw, VirtualSize: n, DiskSize: image.DiskSize(f)}, nil
}
