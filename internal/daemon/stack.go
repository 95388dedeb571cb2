package daemon

import (
	"fmt"

	"vdisk/internal/blockdev"
)

// formatRaw is the raw image format: the file's bytes are the disk's.
const formatRaw = "raw"

// openImage opens the image at path as a Device stack and returns it with
// the image's format name. An empty format means detect. This is the one
// place where image formats plug into the daemon.
//
// noLock skips the image lock: for an image whose lock is already held on
// our behalf (a loop device the previous daemon attached keeps the locked
// file open), and for inspecting.
func openImage(path, format string, readOnly, noLock bool) (blockdev.Device, string, error) {
	switch format {
	case "", formatRaw:
		f, err := blockdev.OpenFile(path, blockdev.FileOptions{ReadOnly: readOnly, NoLock: noLock})
		if err != nil {
			return nil, "", err
		}
		return f, formatRaw, nil
	default:
		return nil, "", fmt.Errorf("%w %q (known: %s)", ErrUnknownFormat, format, formatRaw)
	}
}

// createImage creates a new image of size bytes at path, in format (empty
// means raw). It fails if path exists.
func createImage(path, format string, size int64) error {
	switch format {
	case "", formatRaw:
		f, err := blockdev.OpenFile(path, blockdev.FileOptions{Create: true, Size: size})
		if err != nil {
			return err
		}
		return f.Close()
	default:
		return fmt.Errorf("create %s: %w %q (known: %s)", path, ErrUnknownFormat, format, formatRaw)
	}
}

// defaultVia is the attach path of a format when the request names none.
func defaultVia(format string) string {
	if format == formatRaw {
		return "loop"
	}
	return "fuse"
}
