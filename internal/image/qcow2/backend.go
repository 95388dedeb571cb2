package qcow2

import (
	"fmt"

	"vdisk/internal/image"
)

// OpenBackend opens the qcow2 image whose file is b (an object store's
// chunks); name labels it in messages. Such an image has no backing file:
// a backing path would name a file on whichever host opens it, so one is
// refused unless opt.NoBacking serves the top layer alone. The Backend's
// own lease, not a file lock, keeps a second writer out.
func OpenBackend(b image.Backend, name string, opt image.OpenOptions) (*Image, error) {
	if err := opt.Validate(); err != nil {
		return nil, err
	}
	f := image.NewBackendFile(b)
	h, err := readHeader(f, b.Length())
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, name)
	}
	if h.backingFile != "" && !opt.NoBacking {
		return nil, fmt.Errorf("qcow2: %s names backing file %q, but an image in an object store cannot have one (open it with --no-backing to see the top layer alone)", name, h.backingFile)
	}
	img, err := openStore(f, name, opt)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, name)
	}
	return img, nil
}

// CreateBackend writes a new, empty qcow2 image into the empty Backend b
// and flushes it. Backing files are refused (see OpenBackend).
func CreateBackend(b image.Backend, opt image.CreateOptions) error {
	if err := opt.Validate(); err != nil {
		return err
	}
	if opt.BackingFile != "" {
		return fmt.Errorf("qcow2: an image in an object store cannot have a backing file (%q)", opt.BackingFile)
	}
	p, err := parseCreate("", opt)
	if err != nil {
		return err
	}
	buf, err := layout(p)
	if err != nil {
		return err
	}
	f := image.NewBackendFile(b)
	if _, err := f.WriteAt(buf, 0); err != nil {
		return fmt.Errorf("qcow2: create: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("qcow2: create: %w", err)
	}
	return nil
}
