// Package raw is the raw image format: the file's bytes are the disk's
// bytes. It registers itself with the image registry; opening is
// blockdev.OpenFile, so a raw image is read and written in parallel
// without locks of its own.
package raw

import (
	"fmt"
	"os"
	"syscall"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

func init() {
	image.Register(image.Format{
		Name:   image.Raw,
		Open:   Open,
		Create: Create,
		Info:   Info,
	})
}

// Open opens the raw image at path. A raw image never has a backing file.
func Open(path string, opt image.OpenOptions) (blockdev.Device, error) {
	f, err := blockdev.OpenFile(path, blockdev.FileOptions{ReadOnly: opt.ReadOnly, NoLock: opt.NoLock})
	if err != nil {
		return nil, fmt.Errorf("raw: %w", err)
	}
	return f, nil
}

// Create makes a sparse raw image of opt.Size bytes at path, which must
// not exist. Raw images have no backing file and no clusters.
func Create(path string, opt image.CreateOptions) error {
	if err := opt.Validate(); err != nil {
		return err
	}
	if opt.BackingFile != "" {
		return fmt.Errorf("raw: a raw image cannot have a backing file: %w", image.ErrUnsupported)
	}
	if opt.ClusterSize != 0 || len(opt.Options) > 0 {
		return fmt.Errorf("raw: cluster size and format options do not apply to raw images: %w", image.ErrUnsupported)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("raw: create: %w", err)
	}
	err = f.Truncate(opt.Size)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("raw: create %s: %w", path, err)
	}
	return nil
}

// Info describes the raw image at path.
func Info(path string) (*image.Facts, error) {
	f, err := blockdev.OpenFile(path, blockdev.FileOptions{ReadOnly: true, NoLock: true})
	if err != nil {
		return nil, fmt.Errorf("raw: %w", err)
	}
	defer f.Close()
	fa := &image.Facts{Filename: path, Format: image.Raw, VirtualSize: f.Size()}
	if st, err := os.Stat(path); err == nil {
		fa.DiskSize = st.Size()
		if s, ok := st.Sys().(*syscall.Stat_t); ok && st.Mode().IsRegular() {
			fa.DiskSize = s.Blocks * 512
		}
	}
	return fa, nil
}
