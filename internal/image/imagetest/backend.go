package imagetest

import (
	"fmt"
	"os"
	"sync"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// MemBackend is an image.Backend in memory for the formats' tests: a
// sparse Mem of the capacity plus a length. Closing it keeps the bytes, so
// Reopen can hand them to the next open, like a file on disk.
type MemBackend struct {
	*blockdev.Mem
	st *memFile
}

type memFile struct {
	mu     sync.Mutex
	length int64
}

var _ image.Backend = (*MemBackend)(nil)

// NewMemBackend returns an empty Backend that may grow to capacity bytes.
func NewMemBackend(capacity int64) *MemBackend {
	return &MemBackend{Mem: blockdev.NewMem(capacity), st: &memFile{}}
}

// Reopen returns a new handle on the same bytes.
func (b *MemBackend) Reopen() *MemBackend { return &MemBackend{Mem: b.Mem, st: b.st} }

// Length returns the file's length.
func (b *MemBackend) Length() int64 {
	b.st.mu.Lock()
	defer b.st.mu.Unlock()
	return b.st.length
}

// SetLength sets the file's length, within the capacity.
func (b *MemBackend) SetLength(n int64) error {
	if n < 0 || n > b.Size() {
		return fmt.Errorf("length %d outside [0, %d]: %w", n, b.Size(), blockdev.ErrNoSpace)
	}
	b.st.mu.Lock()
	defer b.st.mu.Unlock()
	b.st.length = n
	return nil
}

// Close keeps the bytes for Reopen.
func (b *MemBackend) Close() error { return nil }

// WriteFile writes the Backend's file (its first Length bytes) to path,
// for qemu-img to check.
func (b *MemBackend) WriteFile(t testing.TB, path string) {
	t.Helper()
	buf := make([]byte, b.Length())
	if _, err := b.ReadAt(buf, 0); err != nil {
		t.Fatalf("read the backend's file: %v", err)
	}
	if err := os.WriteFile(path, buf, 0o644); err != nil {
		t.Fatal(err)
	}
}
