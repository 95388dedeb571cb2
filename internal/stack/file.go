package stack

import (
	"context"
	"fmt"
	"path/filepath"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
	"vdisk/internal/storage/chunked"
	"vdisk/internal/storage/objstore/s3"
)

// source is an image's file, opened wherever it lives, with what the
// format above it needs to know.
type source struct {
	f image.File
	// format is the image's format as its file was opened for it: the one
	// the store recorded at create, or, for a local file, the one asked
	// for or probed.
	format string
	// names opens the files the image names, under the trust policy.
	names image.Names
	// degraded and stats, for an image in an object store.
	degraded func() error
	stats    func() chunked.Stats
}

// storeNames is the policy for images in an object store: they name no
// other file, since a name would be a path on whichever host opens them.
var storeNames = image.NoNames{Why: "an image in an object store cannot name other files: they would be paths on whichever host opens it (--no-backing shows the top layer alone)"}

// openSource opens the file of the image name: a local path (a file or
// block device the user named), or an s3:// image's chunks.
func openSource(ctx context.Context, name string, o Options) (*source, error) {
	if s3.IsURL(name) {
		return openS3Source(ctx, name, o)
	}
	f, fm, err := image.OpenPath(name, image.OpenOptions{Format: o.Format, ReadOnly: o.ReadOnly, NoLock: o.NoLock, Cache: o.Cache, AIO: o.AIO})
	if err != nil {
		return nil, err
	}
	return &source{f: f, format: fm.Name, names: image.LocalNames{Dirs: o.BackingDirs, NoLock: o.NoLock, Cache: o.Cache, AIO: o.AIO}}, nil
}

// openS3Source opens the chunks of an s3:// image: the raw disk itself, or
// the file of the format recorded in its manifest.
func openS3Source(ctx context.Context, name string, o Options) (*source, error) {
	st, prefix, err := o.S3.store(ctx, name)
	if err != nil {
		return nil, err
	}
	dev, err := chunked.Open(ctx, st, prefix, chunked.Options{
		LeaseTTL:        o.S3.LeaseTTL,
		ReadOnly:        o.ReadOnly,
		CacheDir:        o.S3.CacheDir,
		CacheSize:       o.S3.CacheSize,
		ForceTakeover:   o.S3.ForceTakeover,
		UnsafeNoFencing: o.S3.UnsafeNoFencing,
		Logger:          o.Log,
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	s := &source{format: dev.Manifest().ImageFormat, names: storeNames, degraded: dev.Degraded, stats: dev.Stats}
	if s.format == "" {
		s.format = image.Raw
		s.f = image.NewDeviceFile(dev, name)
	} else {
		s.f = image.NewNamedBackendFile(dev, name)
	}
	return s, nil
}

// formatOf returns the image's format, which an explicit one (want, or
// another name of it: vpc) must be.
func (s *source) formatOf(name, want string) (string, error) {
	if want != "" {
		f, err := image.Lookup(want)
		if err != nil {
			return "", err
		}
		if f.Name != s.format {
			return "", fmt.Errorf("%s holds a %s image, not %s", name, s.format, want)
		}
	}
	return s.format, nil
}

// openFormat opens the format of s as a Device. On error s's file is closed.
func openFormat(name string, s *source, o Options) (blockdev.Device, string, error) {
	format, err := s.formatOf(name, o.Format)
	if err != nil {
		s.f.Close()
		return nil, "", err
	}
	dev, err := image.OpenFile(s.f, image.OpenOptions{
		Format:    format,
		ReadOnly:  o.ReadOnly,
		NoLock:    o.NoLock,
		NoBacking: o.NoBacking,
		Names:     s.names,
		Log:       o.Log,
	})
	if err != nil {
		return nil, "", err
	}
	return dev, format, nil
}

// Info reads the facts of the image name (format "" probes) without
// opening any file it names. An s3:// image is read without its lease.
func Info(ctx context.Context, name, format string, o S3Options) (*image.Facts, error) {
	if format == LUKS {
		format = image.Raw
	}
	s, err := openSource(ctx, name, Options{Format: format, ReadOnly: true, NoLock: true, S3: o})
	if err != nil {
		return nil, err
	}
	defer s.f.Close()
	if format, err = s.formatOf(name, format); err != nil {
		return nil, err
	}
	return image.InfoOf(s.f, format)
}

// Check verifies the metadata of the image name (format "" probes), as
// image.CheckOf does; repairing opens it read-write (under its lock or
// lease), checking shares it.
func Check(ctx context.Context, name, format string, opt image.CheckOptions, o S3Options) (*image.CheckResult, error) {
	repair := opt.RepairLeaks || opt.RepairAll
	s, err := openSource(ctx, name, Options{Format: format, ReadOnly: !repair, S3: o})
	if err != nil {
		return nil, err
	}
	if format, err = s.formatOf(name, format); err != nil {
		s.f.Close()
		return nil, err
	}
	res, err := image.CheckOf(s.f, format, opt)
	if cerr := s.f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	return res, err
}

// createNames is the policy for a new image's named files: the image's
// own directory, the directory of the backing file the user named (they
// chose it), and o's BackingDirs.
func createNames(name string, o CreateOptions) image.Names {
	n := image.LocalNames{Dirs: o.BackingDirs}
	if o.BackingFile != "" {
		b := o.BackingFile
		if !filepath.IsAbs(b) {
			b = filepath.Join(filepath.Dir(name), b)
		}
		n.Dirs = append(n.Dirs, filepath.Dir(b))
	}
	return n
}

// Stream writes src as the new image name in one pass when o asks for a
// format that can only be written that way (streamOptimized VMDK);
// handled is false when it does not, and nothing was made.
func Stream(ctx context.Context, name string, src blockdev.Device, o CreateOptions) (handled bool, err error) {
	copt := image.CreateOptions{Format: o.Format, Size: o.Size, ClusterSize: o.ClusterSize, Options: o.Options}
	if !s3.IsURL(name) {
		copt.Names = createNames(name, o)
		return image.Stream(name, src, copt)
	}
	fm, err := image.Lookup(o.Format)
	if err != nil || fm.StreamFile == nil {
		return false, err
	}
	probe := func(f image.File) (bool, error) { return image.StreamIn(f, src, copt) }
	return createS3Format(ctx, name, o, probe)
}
