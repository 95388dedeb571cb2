// Package stack composes the layers of one disk: it opens an image's format
// (probed or named) over its backend and returns the Device an export
// serves. It is the one place where layers are wired together; the daemon
// and `vdisk serve` both call it, so a disk looks the same whichever way it
// reaches a client.
package stack

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
	_ "vdisk/internal/image/all" // every format
)

// Options say how to open (and, when missing, create) a disk.
type Options struct {
	// Format is the image format; "" probes (raw only when nothing else
	// matches).
	Format string
	// ReadOnly opens every layer read-only.
	ReadOnly bool
	// Create makes the image when path does not exist, of Size bytes, in
	// Format (raw when Format is "").
	Create bool
	Size   int64
	// NoLock skips the image lock (for an image whose lock a loop device
	// already holds on our behalf).
	NoLock bool
	// NoBacking serves the top layer of a backing chain alone.
	NoBacking bool
	// BackingDir confines backing files to this directory (safe mode for
	// untrusted images).
	BackingDir string
	// Log receives warnings; nil discards them.
	Log *slog.Logger
}

// Disk is an opened stack.
type Disk struct {
	// Device is the top of the stack: what exports serve.
	Device blockdev.Device
	// Format is the image's format name.
	Format string
	// Created reports that Open made the image.
	Created bool
}

// Open opens the image at path as a Device stack.
func Open(path string, o Options) (*Disk, error) {
	created := false
	if o.Create {
		_, err := os.Stat(path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if o.ReadOnly {
				return nil, fmt.Errorf("%s does not exist, and a read-only open cannot create it", path)
			}
			format := o.Format
			if format == "" {
				format = image.Raw
			}
			if err := image.Create(path, image.CreateOptions{Format: format, Size: o.Size}); err != nil {
				return nil, err
			}
			created = true
		case err != nil:
			return nil, err
		}
	}
	format := o.Format
	if format == "" {
		var err error
		if format, err = image.Probe(path); err != nil {
			return nil, err
		}
	}
	dev, err := image.Open(path, image.OpenOptions{
		Format:     format,
		ReadOnly:   o.ReadOnly,
		NoLock:     o.NoLock,
		NoBacking:  o.NoBacking,
		BackingDir: o.BackingDir,
		Log:        o.Log,
	})
	if err != nil {
		if created {
			os.Remove(path)
		}
		return nil, err
	}
	if o.ReadOnly && !blockdev.InfoOf(dev).ReadOnly {
		dev = blockdev.ReadOnly(dev)
	}
	return &Disk{Device: dev, Format: format, Created: created}, nil
}
