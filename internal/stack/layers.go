package stack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
	"vdisk/internal/storage/objstore/s3"
)

// ChainOptions say how OpenChain opens an image whose backing chain an
// operation works on (vdisk commit, vdisk rebase).
type ChainOptions struct {
	// Format is the image's format; "" probes.
	Format string
	// WriteBase opens one layer of the backing chain read-write: Base,
	// or the image's own backing file when Base is "" (commit's BASE).
	WriteBase bool
	// Base names that layer as qemu-img commit -b does: the name the
	// image above it records, or a path to the same file (relative to the
	// directory of the image that names it).
	Base string
	// NoBacking opens the image alone (rebase -u).
	NoBacking bool
	// BackingDirs are further directory trees the chain's files may lie
	// in (--backing-dir); the trust policy is image.LocalNames.
	BackingDirs []string
	// Log receives warnings; nil discards them.
	Log *slog.Logger
}

// Chain is a local image opened read-write over its backing chain (the
// rest of it read-only, but for the one layer WriteBase asked for).
type Chain struct {
	// Top is the image.
	Top blockdev.Device
	// Format is its format.
	Format string
	// Base is the layer opened read-write, exactly as it sits in Top's
	// chain (nil unless WriteBase).
	Base blockdev.Device
	// BaseName and BaseFormat are what the image above Base records.
	BaseName, BaseFormat string

	file  image.File
	names image.LocalNames
	log   *slog.Logger
}

// ErrNoBacking is OpenChain's error when WriteBase finds no backing file
// (qemu-img's message).
//
//lint:ignore ST1005 qemu-img's message, word for word
var ErrNoBacking = errors.New("Image does not have a backing file")

// OpenChain opens the local image name read-write with its backing chain
// under the trust policy. Every layer is opened once: with WriteBase,
// image.OpenOptions.BackingOpener opens the layer asked for read-write in
// place of the read-only open the chain would make, so the chain reads
// through the very Device the operation writes into and no second open
// of the file competes for its lock. Closing the Chain closes them all.
func OpenChain(ctx context.Context, name string, o ChainOptions) (*Chain, error) {
	if s3.IsURL(name) {
		return nil, fmt.Errorf("%s: an image in an object store has no backing chain", name)
	}
	if o.Format == LUKS {
		return nil, fmt.Errorf("%s: a LUKS volume has no backing chain", name)
	}
	f, fm, err := image.OpenPath(name, image.OpenOptions{Format: o.Format})
	if err != nil {
		return nil, err
	}
	c := &Chain{Format: fm.Name, file: f, names: image.LocalNames{Dirs: o.BackingDirs}, log: o.Log}
	calls, found := 0, false
	hook := func(r *image.BackingRequest) (blockdev.Device, error) {
		calls++
		if !o.WriteBase || found || !isBase(r, o.Base, calls == 1) {
			return r.Open(true)
		}
		found = true
		d, err := r.Open(false)
		if err == nil {
			c.Base, c.BaseName, c.BaseFormat = d, r.Backing.Name, r.Backing.Format
		}
		return d, err
	}
	c.Top, err = image.OpenFile(f, image.OpenOptions{
		Format:        fm.Name,
		NoBacking:     o.NoBacking,
		Names:         c.names,
		BackingOpener: hook,
		Log:           o.Log,
	})
	if err != nil {
		return nil, err
	}
	if o.WriteBase && c.Base == nil {
		c.Top.Close()
		if o.Base == "" || calls == 0 {
			return nil, ErrNoBacking
		}
		//lint:ignore ST1005 qemu-img's message, word for word
		return nil, fmt.Errorf("Did not find '%s' in the backing chain of '%s'", o.Base, name)
	}
	return c, nil
}

// isBase reports whether the backing file r is the layer want names: the
// first one asked about when want is "", else the one whose recorded
// name is want, or whose file is the one want leads to from the directory
// of the image that names it (qemu's bdrv_find_backing_image).
func isBase(r *image.BackingRequest, want string, first bool) bool {
	if want == "" {
		return first
	}
	if r.Backing.Name == want {
		return true
	}
	p := want
	if !filepath.IsAbs(p) {
		d, ok := r.From.(interface{ Dir() (string, error) })
		if !ok {
			return false
		}
		dir, err := d.Dir()
		if err != nil {
			return false
		}
		p = filepath.Join(dir, p)
	}
	lf, err := image.OpenLocal(p, image.LocalOptions{ReadOnly: true, NoLock: true})
	if err != nil {
		return false
	}
	defer lf.Close()
	a, ok1 := r.File.(image.Identified)
	b, ok2 := image.File(lf).(image.Identified)
	return ok1 && ok2 && a.Identity() == b.Identity()
}

// OpenNewBacking opens, read-only, the image that vdisk rebase moves the
// chain's top onto: name as the top would record it (relative names are
// relative to the top's directory), in format ("" probes, never raw).
// The user named it, so its directory is trusted too, like the chain's
// --backing-dir trees, for it and the files it names.
func (c *Chain) OpenNewBacking(name, format string) (blockdev.Device, error) {
	names := c.names
	p := name
	if !filepath.IsAbs(p) {
		if d, ok := c.file.(interface{ Dir() (string, error) }); ok {
			if dir, err := d.Dir(); err == nil {
				p = filepath.Join(dir, p)
			}
		}
	}
	names.Dirs = append(append([]string(nil), names.Dirs...), filepath.Dir(p))
	return image.OpenBacking(c.file, image.Backing{Name: name, Format: format, What: "new backing file"},
		image.OpenOptions{Names: names, Log: c.log})
}

// Close closes the chain: the top, and with it every layer below.
func (c *Chain) Close() error { return c.Top.Close() }
