package daemon

import (
	"context"
	"log/slog"

	"vdisk/internal/blockdev"
	"vdisk/internal/stack"
)

// openImage opens the image at path as a Device stack and returns it with
// the image's format name. An empty format means probe (raw when no other
// format's magic matches). This is the one place where the daemon asks for
// a stack; internal/stack wires the layers.
//
// noLock skips the image lock: for an image whose lock is already held on
// our behalf (a loop device the previous daemon attached keeps the locked
// file open), and for inspecting.
func openImage(path, format string, readOnly, noLock bool, log *slog.Logger) (blockdev.Device, string, error) {
	d, err := stack.Open(context.Background(), path, stack.Options{Format: format, ReadOnly: readOnly, NoLock: noLock, Log: log})
	if err != nil {
		return nil, "", err
	}
	return d.Device, d.Format, nil
}

// createImage creates a new image of size bytes at path, in format (empty
// means raw). It fails if path exists.
func createImage(path, format string, size int64) error {
	return stack.Create(context.Background(), path, stack.CreateOptions{Format: format, Size: size})
}

// formatISO is the registry name of ISO 9660 images, shown to the kernel
// and in the record as CD-ROM media.
const formatISO = "iso"
