package chunked

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"vdisk/internal/blockdev"
	"vdisk/internal/storage/objstore"
)

// Format identifies a chunked image's manifest; Version is the layout this
// package writes. Version 1 images (chunk objects under their bare numbers,
// no epochs) are still read, and a writer's first open moves them to
// version 2 (see fence.go).
const (
	Format    = "vdisk-chunked"
	Version   = 2
	version1  = 1
	maxSealed = 1024
)

// Chunk size bounds and the default.
const (
	// DefaultChunkSize is the chunk size Create uses when none is given.
	DefaultChunkSize = 4 << 20
	// MinChunkSize and MaxChunkSize bound a chunk size, a power of two.
	MinChunkSize = 4 << 10
	MaxChunkSize = 256 << 20
	// MaxSize bounds an image's size (1 PiB).
	MaxSize = 1 << 50
	// MaxChunks bounds an image's number of chunks (its size over its
	// chunk size), so that what an open keeps per chunk (a bit of the
	// existence map) stays small whatever a manifest says: 8 MiB at most.
	MaxChunks = 1 << 26
	// maxManifestBytes bounds the manifest object read at open.
	maxManifestBytes = 128 << 10
	// chunkKeyLen is the length of a chunk's key suffix: 16 hex digits.
	chunkKeyLen = 16
)

const (
	manifestName = "manifest.json"
	leaseName    = "lease.json"
	// clockName is the object a takeover puts to read the store's clock.
	clockName = "lease-clock"
)

// Manifest describes an image, stored as <prefix>/manifest.json. It is
// written at Create; afterwards only Length changes, rewritten by the lease
// holder's Flush.
type Manifest struct {
	Format    string    `json:"format"`
	Version   int       `json:"version"`
	Size      int64     `json:"size"`
	ChunkSize int64     `json:"chunk_size"`
	Created   time.Time `json:"created"`
	// ImageFormat names the image format kept in the chunks ("qcow2"), for
	// an image whose chunks are a format's file rather than the raw disk;
	// "" means raw. It is fixed at Create, so a guest writing a format's
	// magic into a raw disk can never make it reopen as that format.
	ImageFormat string `json:"image_format,omitempty"`
	// Length is the length of that format's file, at most Size (the
	// capacity the file may grow to). Zero for raw images.
	Length int64 `json:"length,omitempty"`
}

// maxImageFormatLen bounds Manifest.ImageFormat.
const maxImageFormatLen = 16

func (m Manifest) validate() error {
	switch {
	case m.Format != Format:
		return fmt.Errorf("format %q is not %q", m.Format, Format)
	case m.Version != Version && m.Version != version1:
		return fmt.Errorf("version %d is not supported (only %d and %d)", m.Version, version1, Version)
	case m.Size <= 0 || m.Size > MaxSize:
		return fmt.Errorf("size %d outside (0, %d]", m.Size, int64(MaxSize))
	case m.ChunkSize < MinChunkSize || m.ChunkSize > MaxChunkSize || m.ChunkSize&(m.ChunkSize-1) != 0:
		return fmt.Errorf("chunk size %d is not a power of two in [%d, %d]", m.ChunkSize, MinChunkSize, MaxChunkSize)
	case (m.Size+m.ChunkSize-1)/m.ChunkSize > MaxChunks:
		return fmt.Errorf("size %d in chunks of %d is more than %d chunks; use larger chunks", m.Size, m.ChunkSize, MaxChunks)
	case m.ImageFormat == "" && m.Length != 0:
		return fmt.Errorf("length %d without an image format", m.Length)
	case m.Length < 0 || m.Length > m.Size:
		return fmt.Errorf("length %d outside [0, size %d]", m.Length, m.Size)
	case len(m.ImageFormat) > maxImageFormatLen || strings.Trim(m.ImageFormat, "abcdefghijklmnopqrstuvwxyz0123456789") != "":
		return fmt.Errorf("image format %q is not a short lower-case name", m.ImageFormat)
	}
	return nil
}

// manifestFile is the manifest object: the Manifest and the fencing state
// (fence.go), which version 1 manifests lack.
type manifestFile struct {
	Manifest
	fence
}

// encode returns the manifest object's bytes.
func (f manifestFile) encode() []byte {
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		panic(err) // a struct of plain fields always encodes
	}
	return append(b, '\n')
}

// parseManifest decodes and checks a manifest object's bytes.
func parseManifest(b []byte) (Manifest, error) {
	f, err := parseManifestFile(b)
	return f.Manifest, err
}

// parseManifestFile decodes and checks a manifest object's bytes, with
// its fencing state.
func parseManifestFile(b []byte) (manifestFile, error) {
	var f manifestFile
	if len(b) > maxManifestBytes {
		return f, fmt.Errorf("manifest of %d bytes exceeds %d: %w", len(b), maxManifestBytes, blockdev.ErrCorrupt)
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return f, fmt.Errorf("manifest: %v: %w", err, blockdev.ErrCorrupt)
	}
	if err := f.Manifest.validate(); err != nil {
		return f, fmt.Errorf("manifest: %v: %w", err, blockdev.ErrCorrupt)
	}
	if err := f.fence.validate(f.Version); err != nil {
		return f, fmt.Errorf("manifest: %v: %w", err, blockdev.ErrCorrupt)
	}
	return f, nil
}

// keyPrefix turns a user's prefix ("disks/a", "" for the bucket's top) into
// the string every key of the image starts with.
func keyPrefix(prefix string) string {
	prefix = strings.Trim(prefix, "/")
	if prefix == "" {
		return ""
	}
	return prefix + "/"
}

func chunkKey(kp string, idx int64) string { return fmt.Sprintf("%s%016x", kp, idx) }

// parseChunkKey returns the chunk number of a listed key, or false for keys
// that are not chunks (manifest, lease, strangers).
func parseChunkKey(kp, key string) (int64, bool) {
	s, ok := strings.CutPrefix(key, kp)
	if !ok || len(s) != chunkKeyLen {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return 0, false
		}
	}
	v, err := strconv.ParseUint(s, 16, 64)
	if err != nil || v > MaxSize/MinChunkSize {
		return 0, false
	}
	return int64(v), true
}

// CreateOptions are the fixed properties of a new image.
type CreateOptions struct {
	// ChunkSize is the size of one object; 0 means DefaultChunkSize.
	ChunkSize int64
	// ImageFormat, when set, makes the image a growable file of that
	// format (Manifest.ImageFormat) of length 0 and capacity size.
	ImageFormat string
}

// Create writes the manifest of a new all-zero image of size bytes under
// prefix. It fails with ErrExists when the prefix already holds one (the
// manifest is put with If-None-Match: *, so two racing creators cannot
// both succeed).
func Create(ctx context.Context, store objstore.Store, prefix string, size int64, opts CreateOptions) (Manifest, error) {
	if opts.ChunkSize == 0 {
		opts.ChunkSize = DefaultChunkSize
	}
	m := Manifest{Format: Format, Version: Version, Size: size, ChunkSize: opts.ChunkSize, Created: time.Now().UTC().Truncate(time.Second), ImageFormat: opts.ImageFormat}
	if err := m.validate(); err != nil {
		return Manifest{}, fmt.Errorf("chunked: create %s: %v: %w", prefix, err, ErrBadOptions)
	}
	key := keyPrefix(prefix) + manifestName
	if _, err := store.Put(ctx, key, manifestFile{Manifest: m}.encode(), objstore.PutOptions{IfNoneMatch: true}); err != nil {
		if errors.Is(err, objstore.ErrPreconditionFailed) {
			return Manifest{}, fmt.Errorf("chunked: create %s: %w", prefix, ErrExists)
		}
		return Manifest{}, fmt.Errorf("chunked: create %s: %w", prefix, unavailable(err))
	}
	return m, nil
}

// Stat reads the manifest of the image under prefix.
func Stat(ctx context.Context, store objstore.Store, prefix string) (Manifest, error) {
	f, _, err := readManifest(ctx, store, keyPrefix(prefix), prefix)
	return f.Manifest, err
}

// readManifest reads the manifest object under kp with its ETag.
func readManifest(ctx context.Context, store objstore.Store, kp, prefix string) (manifestFile, string, error) {
	key := kp + manifestName
	b, info, err := store.Get(ctx, key, 0, maxManifestBytes+1)
	if errors.Is(err, objstore.ErrNotFound) {
		return manifestFile{}, "", fmt.Errorf("chunked: %s: %w", prefix, ErrNoImage)
	}
	if err != nil {
		return manifestFile{}, "", fmt.Errorf("chunked: read manifest %s: %w", key, unavailable(err))
	}
	f, err := parseManifestFile(b)
	if err != nil {
		return manifestFile{}, "", fmt.Errorf("chunked: %s: %w", key, err)
	}
	return f, info.ETag, nil
}
