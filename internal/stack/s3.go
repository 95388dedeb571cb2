package stack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"vdisk/internal/image"
	"vdisk/internal/storage/chunked"
	"vdisk/internal/storage/objstore"
	"vdisk/internal/storage/objstore/s3"
)

// EnvS3Endpoint names the environment variable that gives the object
// store's endpoint when S3Options.Endpoint is empty.
const EnvS3Endpoint = "VDISK_S3_ENDPOINT"

// S3Options say how to reach the object store behind s3://bucket/prefix
// names and how to hold an image there.
type S3Options struct {
	// Endpoint is the store's URL; "" means $VDISK_S3_ENDPOINT, else the
	// AWS configuration (AWS_ENDPOINT_URL, ...). Credentials and region
	// come from the standard AWS environment and files.
	Endpoint string
	// Region is the store's region; "" means the AWS configuration's.
	Region string
	// Profile is the AWS shared-configuration profile with the
	// credentials; "" means $AWS_PROFILE, else "default".
	Profile string
	// CacheDir keeps clean chunks locally across opens.
	CacheDir string
	// CacheSize caps the memory of clean cached data of an open image (0:
	// chunked.DefaultCacheSize).
	CacheSize int64
	// ForceTakeover takes the writer's lease from a holder that let it
	// expire.
	ForceTakeover bool
	// ChunkSize is the object size of an image created now (0: the
	// default).
	ChunkSize int64
	// LeaseTTL is how long this writer's lease lasts unless renewed, that
	// is how long the image stays locked after the writer dies (0:
	// chunked.DefaultLeaseTTL).
	LeaseTTL time.Duration
	// UnsafeNoFencing opens writers on a store that ignores conditional
	// PUTs (If-Match), where a writer that lost its lease could overwrite
	// its successor's chunks; without it such a store is refused.
	UnsafeNoFencing bool
	// Observe, when set, hears of every request to the store (metrics);
	// OnRetry of every retry of one.
	Observe func(op, status string, read, written int64)
	OnRetry func()
}

func (o S3Options) config(name string) (s3.Config, string, error) {
	ep := o.Endpoint
	if ep == "" {
		ep = os.Getenv(EnvS3Endpoint)
	}
	cfg, prefix, err := s3.FromURL(name, ep)
	cfg.Region, cfg.Profile, cfg.OnRetry = o.Region, o.Profile, o.OnRetry
	return cfg, prefix, err
}

// existsS3 reports whether the object store holds the image name.
func existsS3(ctx context.Context, name string, o S3Options) (bool, error) {
	st, prefix, err := o.store(ctx, name)
	if err != nil {
		return false, err
	}
	_, err = chunked.Stat(ctx, st, prefix)
	switch {
	case errors.Is(err, chunked.ErrNoImage):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("%s: %w", name, err)
	}
	return true, nil
}

// store connects to the object store of the s3:// name and returns it
// with the image's prefix.
func (o S3Options) store(ctx context.Context, name string) (objstore.Store, string, error) {
	cfg, prefix, err := o.config(name)
	if err != nil {
		return nil, "", err
	}
	st, err := s3.New(ctx, cfg)
	if err != nil {
		return nil, "", err
	}
	if o.Observe != nil {
		return objstore.NewObserved(st, o.Observe), prefix, nil
	}
	return st, prefix, nil
}

// removeS3 deletes an image this process just created and could not
// finish or open; log (may be nil) hears when that fails too.
func removeS3(st objstore.Store, name, prefix string, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := chunked.Remove(ctx, st, prefix); err != nil && log != nil {
		log.Warn("could not remove the image made by a failed create", "image", name, "err", err)
	}
}

// Remove deletes an image that this process created and has not handed
// to anyone (a convert or create whose later step failed): a file, or an
// s3:// image's manifest, chunks and lease.
func Remove(name string, o S3Options) error {
	if !s3.IsURL(name) {
		return os.Remove(name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, prefix, err := o.store(ctx, name)
	if err != nil {
		return err
	}
	return chunked.Remove(ctx, st, prefix)
}

// capacity is how far a format's file in an object store may grow for an
// image of virtual size size: the data plus room for metadata (a quarter
// of it, at least 1 GiB). Chunks never written cost nothing.
func capacity(size int64) int64 {
	c := size + max(size/4, 1<<30)
	c = (c + chunked.MaxChunkSize - 1) / chunked.MaxChunkSize * chunked.MaxChunkSize
	return min(c, chunked.MaxSize)
}

// createS3 makes a new image in an object store: raw chunks that are the
// disk, or the file of any other format, written into chunks by the
// format itself.
func createS3(ctx context.Context, name string, o CreateOptions) error {
	if o.BackingFile != "" {
		return fmt.Errorf("%s: an image in an object store cannot have a backing file", name)
	}
	if o.Format != image.Raw {
		_, err := createS3Format(ctx, name, o, func(f image.File) (bool, error) {
			return true, image.CreateIn(f, image.CreateOptions{Format: o.Format, Size: o.Size, ClusterSize: o.ClusterSize, Options: o.Options, Names: storeNames})
		})
		return err
	}
	st, prefix, err := o.S3.store(ctx, name)
	if err != nil {
		return err
	}
	cs := o.S3.ChunkSize
	if cs == 0 {
		cs = o.ClusterSize // a raw image's allocation unit is its chunk
	}
	if _, err := chunked.Create(ctx, st, prefix, o.Size, chunked.CreateOptions{ChunkSize: cs}); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// createS3Format makes a new s3:// image whose chunks hold a file of
// o.Format, and lets write fill that file. When write reports not
// handled, or fails, the image is deleted again.
func createS3Format(ctx context.Context, name string, o CreateOptions, write func(image.File) (bool, error)) (bool, error) {
	if o.Size <= 0 {
		return false, fmt.Errorf("%s: a %s image in an object store needs a size", name, o.Format)
	}
	st, prefix, err := o.S3.store(ctx, name)
	if err != nil {
		return false, err
	}
	if _, err := chunked.Create(ctx, st, prefix, capacity(o.Size), chunked.CreateOptions{ChunkSize: o.S3.ChunkSize, ImageFormat: o.Format}); err != nil {
		return false, fmt.Errorf("%s: %w", name, err)
	}
	handled := false
	dev, err := chunked.Open(ctx, st, prefix, chunked.Options{ForceTakeover: o.S3.ForceTakeover, UnsafeNoFencing: o.S3.UnsafeNoFencing})
	if err == nil {
		f := image.NewNamedBackendFile(dev, name)
		handled, err = write(f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil || !handled {
		removeS3(st, name, prefix, nil)
	}
	if err != nil {
		return handled, fmt.Errorf("%s: %w", name, err)
	}
	return handled, nil
}

// InspectS3 reads what the object store holds of the s3:// image name:
// its manifest, chunk objects and lease holder, without opening it.
func InspectS3(ctx context.Context, name string, o S3Options) (chunked.Report, error) {
	st, prefix, err := o.store(ctx, name)
	if err != nil {
		return chunked.Report{}, err
	}
	r, err := chunked.Inspect(ctx, st, prefix)
	if err != nil {
		return r, fmt.Errorf("%s: %w", name, err)
	}
	return r, nil
}

// DeleteS3 deletes the s3:// image name from its object store for good:
// refused, naming the writer, while someone has it open (unless its lease
// expired and o.ForceTakeover).
func DeleteS3(ctx context.Context, name string, o S3Options) error {
	st, prefix, err := o.store(ctx, name)
	if err != nil {
		return err
	}
	if err := chunked.Delete(ctx, st, prefix, chunked.AdminOptions{ForceTakeover: o.ForceTakeover}); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// resizeS3 resizes an image in an object store that nobody has open: a raw
// one by its manifest (chunked.Resize), a qcow2 one by growing the file's
// capacity if it needs more, then its virtual size through the format.
func resizeS3(ctx context.Context, name string, newSize func(old int64) int64, shrink bool, o Options) (int64, error) {
	st, prefix, err := o.S3.store(ctx, name)
	if err != nil {
		return 0, err
	}
	m, err := chunked.Stat(ctx, st, prefix)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	admin := chunked.AdminOptions{ForceTakeover: o.S3.ForceTakeover}
	o.ReadOnly, o.Create, o.KeepEncrypted, o.NoBacking = false, false, true, true
	if m.ImageFormat == "" {
		ro, err := chunked.Open(ctx, st, prefix, chunked.Options{ReadOnly: true})
		if err != nil {
			return 0, fmt.Errorf("%s: %w", name, err)
		}
		head, err := payloadOffset(ro)
		ro.Close()
		if err != nil {
			return 0, fmt.Errorf("%s: %w", name, err)
		}
		old := m.Size - head
		size := newSize(old)
		switch {
		case size <= 0:
			return old, fmt.Errorf("%s: a size of %d bytes", name, size)
		case size < old && !shrink:
			return old, fmt.Errorf("%s: shrinking from %d to %d bytes drops the data past the new end; pass --shrink if that is what you want", name, old, size)
		}
		if _, err := chunked.Resize(ctx, st, prefix, size+head, admin); err != nil {
			return old, fmt.Errorf("%s: %w", name, err)
		}
		return old, nil
	}
	// A format's file: room for it first (the capacity only grows, and
	// growing it when unneeded costs nothing), then the format.
	d, err := open(ctx, name, o)
	if err != nil {
		return 0, err
	}
	head, err := payloadOffset(d.Device)
	old := d.Device.Size() - head
	d.Device.Close()
	if err != nil {
		return old, fmt.Errorf("%s: %w", name, err)
	}
	if c := capacity(newSize(old) + head); c > m.Size {
		if _, err := chunked.Resize(ctx, st, prefix, c, admin); err != nil {
			return old, fmt.Errorf("%s: grow the %s file's capacity: %w", name, m.ImageFormat, err)
		}
	}
	if d, err = open(ctx, name, o); err != nil {
		return old, err
	}
	old, err = resizeDevice(name, d, newSize, shrink)
	if cerr := d.Device.Close(); err == nil && cerr != nil {
		err = cerr
	}
	return old, err
}

// What the object store layer reports, named here for the daemon and the
// CLI, which reach the layers only through the stack.
type (
	// StoreStats is an open s3:// disk's write-back cache.
	StoreStats = chunked.Stats
	// StoreReport is what the store holds of an s3:// image (InspectS3).
	StoreReport = chunked.Report
	// LeaseError says who holds an s3:// image's lease.
	LeaseError = chunked.LeaseError
)

// Errors of images in an object store.
var (
	// ErrLeaseHeld: another writer holds the image.
	ErrLeaseHeld = chunked.ErrLeaseHeld
	// ErrNoImage: the store holds no image under that name.
	ErrNoImage = chunked.ErrNoImage
	// ErrNoFencing: the store ignores conditional PUTs, so a writer is
	// refused (S3Options.UnsafeNoFencing overrides).
	ErrNoFencing = chunked.ErrNoFencing
)
