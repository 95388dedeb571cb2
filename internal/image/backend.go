package image

import (
	"fmt"
	"sync"

	"vdisk/internal/blockdev"
)

// Backend is where a format keeps its file when the file is not on a local
// filesystem: a Device holding the file's bytes from offset 0 up to a
// length that grows as the format appends (the chunked object store's
// Device). Size is the capacity the length may grow to; Flush makes the
// data and then the length durable.
type Backend interface {
	blockdev.Device
	// Length is the file's current length.
	Length() int64
	// SetLength changes the file's length; past Size it fails with
	// blockdev.ErrNoSpace.
	SetLength(n int64) error
}

// BackendFile presents a Backend to a format as the file it would
// otherwise open: reads past the length are short with io.EOF, writes past
// it extend it, Sync flushes and Punch releases a range. Its methods are
// safe for concurrent use.
type BackendFile struct {
	b    Backend
	name string
	mu   sync.Mutex // serialises growth
}

var (
	_ File    = (*BackendFile)(nil)
	_ Puncher = (*BackendFile)(nil)
)

// NewBackendFile returns the file view of b.
func NewBackendFile(b Backend) *BackendFile { return &BackendFile{b: b} }

// NewNamedBackendFile returns the file view of b, called name in
// messages (its s3:// URL).
func NewNamedBackendFile(b Backend, name string) *BackendFile {
	return &BackendFile{b: b, name: name}
}

// Name names the file in messages.
func (f *BackendFile) Name() string {
	if f.name == "" {
		return "object-store image"
	}
	return f.name
}

// Allocated is the file's length (chunks never written cost nothing, but
// the store does not say which were).
func (f *BackendFile) Allocated() int64 { return f.b.Length() }

// Backend returns the Backend under f.
func (f *BackendFile) Backend() Backend { return f.b }

// ReadAt reads like a file's ReadAt: a read reaching past the length
// returns what lies before it and io.EOF.
func (f *BackendFile) ReadAt(p []byte, off int64) (int, error) {
	return readBefore(f.b, p, off, f.b.Length())
}

// WriteAt writes like a file's WriteAt, extending the length when the
// write ends past it.
func (f *BackendFile) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("image: write at negative offset %d: %w", off, blockdev.ErrOutOfRange)
	}
	if err := f.grow(off + int64(len(p))); err != nil {
		return 0, err
	}
	return f.b.WriteAt(p, off)
}

// grow extends the length to at least end.
func (f *BackendFile) grow(end int64) error {
	if end <= f.b.Length() {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if end <= f.b.Length() {
		return nil
	}
	return f.b.SetLength(end)
}

// Sync makes every completed write, and the length, durable.
func (f *BackendFile) Sync() error { return f.b.Flush() }

// Punch releases the storage of a range inside the file, which then reads
// as zeroes.
func (f *BackendFile) Punch(off, n int64) error {
	n = min(n, f.b.Length()-off)
	if n <= 0 {
		return nil
	}
	return blockdev.WriteZeroes(f.b, off, n, true)
}

// Size returns the file's length.
func (f *BackendFile) Size() (int64, error) { return f.b.Length(), nil }

// Truncate sets the file's length.
func (f *BackendFile) Truncate(n int64) error { return f.b.SetLength(n) }

// Close closes the Backend.
func (f *BackendFile) Close() error { return f.b.Close() }
