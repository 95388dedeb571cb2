package stack

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
)

// EmptyImage makes a new, empty local image of format and size (with the
// creation options opts) in a directory of its own, and returns the size
// of its file and of its disk, then removes it: the fixed part of the
// format's layout as vdisk creates it, for vdisk measure.
func EmptyImage(ctx context.Context, format string, size int64, opts map[string]string) (fileSize, diskSize int64, err error) {
	dir, err := os.MkdirTemp("", "vdisk-measure-")
	if err != nil {
		return 0, 0, err
	}
	defer os.RemoveAll(dir)
	name := filepath.Join(dir, "image")
	if err := Create(ctx, name, CreateOptions{Format: format, Size: size, Options: opts}); err != nil {
		return 0, 0, err
	}
	d, err := Open(ctx, name, Options{Format: format, ReadOnly: true})
	if err != nil {
		return 0, 0, err
	}
	diskSize = d.Device.Size()
	if err := d.Device.Close(); err != nil {
		return 0, 0, err
	}
	fi, err := os.Stat(name)
	if err != nil {
		return 0, 0, err
	}
	if !fi.Mode().IsRegular() {
		return 0, 0, fmt.Errorf("%s: not a regular file", name)
	}
	return fi.Size(), diskSize, nil
}
