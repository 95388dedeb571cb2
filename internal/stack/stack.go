// Package stack composes the layers of one disk: it opens an image's format
// (probed or named) over its backend (a local file, or an object store for
// s3:// names) and returns the Device an export serves. It is the one place
// where layers are wired together; the daemon, `vdisk serve` and `vdisk
// convert` all call it, so a disk looks the same whichever way it reaches a
// client.
package stack

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"

	"vdisk/internal/blockdev"
	"vdisk/internal/crypt/luks"
	"vdisk/internal/image"
	_ "vdisk/internal/image/all" // every format
	"vdisk/internal/storage/chunked"
	"vdisk/internal/storage/objstore/s3"
)

// Options say how to open (and, when missing, create) a disk.
type Options struct {
	// Format is the image format; "" probes (raw only when nothing else
	// matches).
	Format string
	// ReadOnly opens every layer read-only.
	ReadOnly bool
	// Create makes the image when it does not exist, of Size bytes, in
	// Format (raw when Format is "").
	Create bool
	Size   int64
	// NoLock skips the image lock (for an image whose lock a loop device
	// already holds on our behalf).
	NoLock bool
	// NoBacking serves the top layer of a backing chain alone.
	NoBacking bool
	// Cache and AIO are the cache and I/O modes of local image files (and
	// the files they name), as qemu-nbd --cache and --aio mean them.
	Cache blockdev.CacheMode
	AIO   blockdev.AIOMode
	// BackingDirs are directory trees, beside each image's own, that the
	// files an image names (backing files, parents, extents) may lie in:
	// by default nothing outside the image's directory is followed.
	BackingDirs []string
	// S3 says how to reach an object store for s3:// names.
	S3 S3Options
	// Passphrase unlocks an encrypted (LUKS) image; without it such an
	// image fails to open with ErrNeedPassphrase.
	Passphrase Passphrase
	// KeepEncrypted serves a LUKS volume as it is stored (the ciphertext and
	// its header), without unlocking it.
	KeepEncrypted bool
	// AllowDiscards passes trims through the encryption layer; they reveal
	// which blocks are unused.
	AllowDiscards bool
	// Encrypt, with Create, encrypts a new image.
	Encrypt EncryptOptions
	// Log receives warnings; nil discards them.
	Log *slog.Logger

	// Snapshot opens the image read-only under a throw-away qcow2
	// overlay in an unlinked file of SnapshotDir ("": $TMPDIR): reads see
	// the writes, the image is never written, and the overlay is gone when
	// the Device closes or the process dies (snapshot.go).
	Snapshot    bool
	SnapshotDir string
	// Base makes the image a qcow2 overlay over Base (a path or an s3://
	// URL, opened read-only through the stack as Format says), created
	// when missing with Base recorded as its backing file; an existing
	// overlay must record Base (snapshot.go).
	Base string
}

// Disk is an opened stack.
type Disk struct {
	// Device is the top of the stack: what exports serve.
	Device blockdev.Device
	// Format is the image's format name.
	Format string
	// Created reports that Open made the image.
	Created bool
	// Encrypted reports that the image holds a LUKS volume that Open
	// unlocked.
	Encrypted bool
	// Degraded, set for an image in an object store, says why its store
	// cannot take writes right now (nil when healthy), whatever layers
	// sit above it.
	Degraded func() error
	// Stats, set for an image in an object store, reports its cache.
	Stats func() chunked.Stats
}

// Open opens the image named by name (a file path, or s3://bucket/prefix)
// as a Device stack. ctx bounds the opening only, not the Device's life.
func Open(ctx context.Context, name string, o Options) (*Disk, error) {
	switch {
	case o.Snapshot && o.Base != "":
		return nil, fmt.Errorf("%s: a snapshot and an overlay exclude each other", name)
	case o.Snapshot && !o.ReadOnly:
		return openSnapshot(ctx, name, o)
	case o.Base != "":
		return openOverlay(ctx, name, o)
	}
	o.Snapshot = false // read-only: nothing to throw away
	wantLUKS := o.Format == LUKS
	if wantLUKS {
		o.Format = image.Raw // qemu's "luks" format: LUKS on a raw file
		if o.Create && o.Encrypt.Type == "" {
			o.Encrypt.Type = "luks2"
		}
	}
	if o.Format != "" {
		f, err := image.Lookup(o.Format)
		if err != nil {
			return nil, err
		}
		o.Format = f.Name // "vpc" is vhd
	}
	created := false
	if o.Create {
		ok, err := exists(ctx, name, o.S3)
		switch {
		case err != nil:
			return nil, err
		case !ok && o.ReadOnly:
			return nil, fmt.Errorf("%s does not exist, and a read-only open cannot create it", name)
		case !ok:
			if err := Create(ctx, name, CreateOptions{Format: o.Format, Size: o.Size, S3: o.S3, Encrypt: o.Encrypt}); err != nil {
				return nil, err
			}
			created = true
		}
	}
	d, err := open(ctx, name, o)
	if err == nil && wantLUKS && !d.Encrypted && !IsLUKS(d.Device) {
		d.Device.Close()
		err = fmt.Errorf("%s: --format luks, but the image holds no LUKS header", name)
	}
	if err != nil {
		if created {
			Remove(name, o.S3)
		}
		return nil, err
	}
	d.Created = created
	return d, nil
}

// LUKS is qemu's name for a LUKS volume in a raw file ("-f luks"), which
// vdisk accepts wherever a format is named: raw underneath, LUKS on top.
const LUKS = "luks"

// open opens the stack of an existing image.
func open(ctx context.Context, name string, o Options) (*Disk, error) {
	src, err := openSource(ctx, name, o)
	if err != nil {
		return nil, err
	}
	dev, format, err := openFormat(name, src, o)
	if err != nil {
		return nil, err
	}
	d, err := finish(ctx, name, dev, format, false, o)
	if err != nil {
		return nil, err
	}
	d.Degraded, d.Stats = src.degraded, src.stats
	return d, nil
}

// exists reports whether the image name exists.
func exists(ctx context.Context, name string, o S3Options) (bool, error) {
	if s3.IsURL(name) {
		return existsS3(ctx, name, o)
	}
	_, err := os.Lstat(name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	case err != nil:
		return false, err
	}
	return true, nil
}

// finish puts the layers above the format on dev: decryption, then the
// read-only guard. On error it closes dev.
func finish(ctx context.Context, name string, dev blockdev.Device, format string, created bool, o Options) (*Disk, error) {
	top, encrypted, err := unlock(ctx, name, dev, o)
	if err != nil {
		dev.Close()
		return nil, err
	}
	return &Disk{Device: readOnly(top, o.ReadOnly), Format: format, Created: created, Encrypted: encrypted}, nil
}

// readOnly makes sure a device opened read-only refuses writes, whatever
// its layer does.
func readOnly(dev blockdev.Device, ro bool) blockdev.Device {
	if ro && !blockdev.InfoOf(dev).ReadOnly {
		return blockdev.ReadOnly(dev)
	}
	return dev
}

// CreateOptions say how Create makes a new image.
type CreateOptions struct {
	// Format is the image format; "" means raw.
	Format string
	// Size is the virtual size in bytes.
	Size int64
	// BackingFile and BackingFormat name a backing image (formats that
	// have them).
	BackingFile, BackingFormat string
	// ClusterSize is the format's allocation unit (0: its default); for
	// raw s3:// images, the chunk size unless S3.ChunkSize is set.
	ClusterSize int64
	// Options holds format-specific settings.
	Options map[string]string
	// S3 says how to reach an object store for s3:// names.
	S3 S3Options
	// Encrypt encrypts the new image: Size is then the decrypted size, and
	// the image is larger by the LUKS header.
	Encrypt EncryptOptions
	// BackingDirs are directory trees, beside the new image's own and the
	// backing file's, that files the backing chain names may lie in.
	BackingDirs []string
}

// Create makes a new image named name; it fails if one exists.
func Create(ctx context.Context, name string, o CreateOptions) error {
	if o.Format == LUKS {
		o.Format = image.Raw
		if o.Encrypt.Type == "" {
			o.Encrypt.Type = "luks2"
		}
	}
	if o.Format == "" {
		o.Format = image.Raw
	}
	f, err := image.Lookup(o.Format)
	if err != nil {
		return err
	}
	o.Format = f.Name // "vpc" is vhd
	if o.Encrypt.Type == "" {
		return create(ctx, name, o)
	}
	defer clear(o.Encrypt.Passphrase)
	hdr, err := luks.PayloadOffset(luksOptions(o.Encrypt))
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	o.Size += hdr
	if err := create(ctx, name, o); err != nil {
		return err
	}
	d, err := Open(ctx, name, Options{Format: o.Format, S3: o.S3, KeepEncrypted: true})
	if err == nil {
		err = formatLUKS(d.Device, o.Encrypt)
		if cerr := d.Device.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		Remove(name, o.S3)
		return fmt.Errorf("%s: encrypt: %w", name, err)
	}
	return nil
}

// create makes a new image without encryption.
func create(ctx context.Context, name string, o CreateOptions) error {
	if s3.IsURL(name) {
		return createS3(ctx, name, o)
	}
	return image.Create(name, image.CreateOptions{
		Format:        o.Format,
		Size:          o.Size,
		BackingFile:   o.BackingFile,
		BackingFormat: o.BackingFormat,
		ClusterSize:   o.ClusterSize,
		Options:       o.Options,
		Names:         createNames(name, o),
	})
}

// Resize changes the size of the disk in the image name, which must not
// be open anywhere (Open takes its lock): newSize gets the disk's size now
// and returns the new one. Growing adds zeroes; shrinking drops the data
// past the new end and needs shrink. Raw files and qcow2 (growing) can be
// resized, locally and in an object store, and so can a LUKS volume in
// them whose data segment runs to the end (all LUKS1, and LUKS2 as
// vdisk and cryptsetup make it): the image changes by as much as the
// decrypted disk, and no passphrase is needed. It returns the old size.
func Resize(ctx context.Context, name string, newSize func(old int64) int64, shrink bool, o Options) (int64, error) {
	if s3.IsURL(name) {
		return resizeS3(ctx, name, newSize, shrink, o)
	}
	o.ReadOnly, o.Create, o.KeepEncrypted, o.NoBacking = false, false, true, true
	d, err := open(ctx, name, o)
	if err != nil {
		return 0, err
	}
	old, err := resizeDevice(name, d, newSize, shrink)
	if cerr := d.Device.Close(); err == nil && cerr != nil {
		err = cerr
	}
	return old, err
}

// resizeDevice resizes the image d holds (opened KeepEncrypted).
func resizeDevice(name string, d *Disk, newSize func(old int64) int64, shrink bool) (int64, error) {
	dev := d.Device
	head, err := payloadOffset(dev)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	old := dev.Size() - head
	size := newSize(old)
	r, ok := dev.(blockdev.Resizer)
	switch {
	case !ok:
		return old, fmt.Errorf("%s: %s images cannot be resized (raw and qcow2 can)", name, d.Format)
	case size <= 0:
		return old, fmt.Errorf("%s: a size of %d bytes", name, size)
	case size < old && !shrink:
		return old, fmt.Errorf("%s: shrinking from %d to %d bytes drops the data past the new end; pass --shrink if that is what you want", name, old, size)
	}
	if err := r.Resize(size + head); err != nil {
		return old, fmt.Errorf("%s: %w", name, err)
	}
	return old, nil
}

// payloadOffset is where the disk starts in dev: 0, or a LUKS volume's
// data offset when its data segment runs to the end of dev (so that it
// follows a resize); a segment of fixed size cannot be resized.
func payloadOffset(dev blockdev.Device) (int64, error) {
	if !luks.IsLUKS(dev) {
		return 0, nil
	}
	v, err := luks.Load(dev)
	if err != nil {
		return 0, err
	}
	segs := v.Info().Segments
	if len(segs) != 1 || segs[0].Size != "dynamic" {
		return 0, fmt.Errorf("the LUKS volume's data segment has a fixed size, which vdisk does not change")
	}
	return segs[0].Offset, nil
}
