package daemon

import (
	"context"
	"log/slog"

	"vdisk/internal/api"
	"vdisk/internal/stack"
)

// openOpts are what an open needs beyond the state file's record of the
// disk: what only this request carries.
type openOpts struct {
	// noLock skips the image lock: for an image whose lock is already
	// held on our behalf (a loop device the previous daemon attached keeps
	// the locked file open), and for inspecting.
	noLock bool
	// create makes an s3:// image of size bytes when there is none (a
	// local file is created before, by createImage).
	create bool
	size   int64
	// passphrase unlocks an encrypted image; the caller clears it.
	passphrase []byte
	// forceTakeover takes an expired writer's lease of an s3:// image.
	forceTakeover bool
	// chunkSize is the object size of an s3:// image created now.
	chunkSize int64
	// observe hears of every object-store request (metrics).
	observe func(op, status string, read, written int64)
	onRetry func()
}

// openImage opens the image of sd as a Device stack. An empty sd.Format
// means probe (raw when no other format's magic matches). This is the one
// place where the daemon asks for a stack; internal/stack wires the
// layers. An encrypted image without o.passphrase fails with
// stack.ErrNeedPassphrase.
// ctx bounds the opening.
func openImage(ctx context.Context, sd stateDisk, o openOpts, log *slog.Logger) (*stack.Disk, error) {
	so := stack.Options{
		Format:        sd.Format,
		ReadOnly:      sd.ReadOnly,
		NoLock:        o.noLock,
		AllowDiscards: sd.AllowDiscards,
		Create:        o.create,
		Size:          o.size,
		BackingDirs:   sd.BackingDirs,
		NoBacking:     sd.NoBacking,
		Log:           log,
		Snapshot:      sd.Snapshot,
		SnapshotDir:   sd.SnapshotDir,
		Base:          sd.Base,
	}
	if sd.Base != "" {
		so.Format = sd.BaseFormat // Format is the overlay's: qcow2
	}
	var err error
	if so.Cache, so.AIO, err = cacheModes(sd.CacheMode, sd.AIO); err != nil {
		return nil, err
	}
	if sd.S3 != nil {
		so.S3 = stack.S3Options{Endpoint: sd.S3.Endpoint, Region: sd.S3.Region, Profile: sd.S3.Profile, CacheDir: sd.S3.CacheDir, CacheSize: sd.S3.CacheSize, LeaseTTL: sd.S3.LeaseTTL, UnsafeNoFencing: sd.S3.UnsafeNoFencing}
	}
	so.S3.ForceTakeover, so.S3.ChunkSize, so.S3.Observe, so.S3.OnRetry = o.forceTakeover, o.chunkSize, o.observe, o.onRetry
	if len(o.passphrase) > 0 {
		// stack clears what the function returns: hand it a copy, the
		// caller clears the original.
		so.Passphrase = func(string) ([]byte, error) { return append([]byte(nil), o.passphrase...), nil }
	}
	if so.Size == 0 {
		so.Size = api.DefaultSize
	}
	return stack.Open(ctx, sd.File, so)
}

// inspectImage opens the image at path read-only, without its lock and
// without unlocking an encrypted volume (the Device is the ciphertext),
// following the files it names as req says. ctx bounds the opening.
func inspectImage(ctx context.Context, path string, req api.InspectRequest, log *slog.Logger) (*stack.Disk, error) {
	so := stack.Options{Format: req.Format, ReadOnly: true, NoLock: true, KeepEncrypted: true,
		BackingDirs: req.BackingDirs, NoBacking: req.NoBacking, Log: log}
	s3 := req.S3
	if s3 != nil {
		so.S3 = stack.S3Options{Endpoint: s3.Endpoint, Region: s3.Region, Profile: s3.Profile, CacheDir: s3.CacheDir}
	}
	return stack.Open(ctx, path, so)
}

// createImage creates a new image of size bytes at path, in format (empty
// means raw). It fails if path exists. ctx bounds it.
func createImage(ctx context.Context, path, format string, size int64) error {
	return stack.Create(ctx, path, stack.CreateOptions{Format: format, Size: size})
}

// formatISO is the registry name of ISO 9660 images, shown to the kernel
// and in the record as CD-ROM media.
const formatISO = "iso"
