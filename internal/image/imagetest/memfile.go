package imagetest

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// DefaultMemFileMax is how long a MemFile may grow when its Max is zero.
const DefaultMemFileMax = 1 << 30

// MemFile is an image.File in memory for the formats' tests and fuzz
// targets. Its methods are safe for concurrent use. Closing a MemFile
// keeps its bytes: Reopen hands them to a new handle, like a file on
// disk, and the closed handle fails every further call with os.ErrClosed.
type MemFile struct {
	d      *memData
	mu     sync.Mutex
	closed bool
}

// memData is the bytes that every handle of one MemFile shares.
type memData struct {
	mu   sync.RWMutex
	b    []byte
	name string
	// max bounds the length; writes and truncates past it fail with
	// blockdev.ErrNoSpace.
	max   int64
	syncs int
}

var (
	_ image.File       = (*MemFile)(nil)
	_ image.Puncher    = (*MemFile)(nil)
	_ image.Identified = (*MemFile)(nil)
)

// NewMemFile returns a MemFile called name holding a copy of b, which may
// grow to DefaultMemFileMax bytes.
func NewMemFile(name string, b []byte) *MemFile {
	return &MemFile{d: &memData{b: append([]byte(nil), b...), name: name, max: DefaultMemFileMax}}
}

// ReadMemFile returns a MemFile holding the file at path, named by it.
func ReadMemFile(t testing.TB, path string) *MemFile {
	t.Helper()
	return NewMemFile(path, ReadFile(t, path))
}

// SetMax bounds the length the file may grow to.
func (f *MemFile) SetMax(n int64) {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	f.d.max = n
}

// Reopen returns a new, open handle on the same bytes.
func (f *MemFile) Reopen() *MemFile { return &MemFile{d: f.d} }

// Bytes returns a copy of the file's bytes.
func (f *MemFile) Bytes() []byte {
	f.d.mu.RLock()
	defer f.d.mu.RUnlock()
	return append([]byte(nil), f.d.b...)
}

// Syncs counts the Sync calls on every handle.
func (f *MemFile) Syncs() int {
	f.d.mu.RLock()
	defer f.d.mu.RUnlock()
	return f.d.syncs
}

// WriteFile writes the file's bytes to path, for qemu-img to read.
func (f *MemFile) WriteFile(t testing.TB, path string) {
	t.Helper()
	if err := os.WriteFile(path, f.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

// open fails once the handle is closed.
func (f *MemFile) open() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return fmt.Errorf("%s: %w", f.d.name, os.ErrClosed)
	}
	return nil
}

// ReadAt reads like os.File.ReadAt: short with io.EOF past the end.
func (f *MemFile) ReadAt(p []byte, off int64) (int, error) {
	if err := f.open(); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, fmt.Errorf("%s: read at negative offset %d", f.d.name, off)
	}
	f.d.mu.RLock()
	defer f.d.mu.RUnlock()
	n := 0
	if off < int64(len(f.d.b)) {
		n = copy(p, f.d.b[off:])
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt writes like os.File.WriteAt, extending the file (with zeroes
// up to off) when the write ends past it.
func (f *MemFile) WriteAt(p []byte, off int64) (int, error) {
	if err := f.open(); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, fmt.Errorf("%s: write at negative offset %d", f.d.name, off)
	}
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	end := off + int64(len(p))
	if end > int64(len(f.d.b)) {
		if err := f.d.resize(end); err != nil {
			return 0, err
		}
	}
	return copy(f.d.b[off:], p), nil
}

// resize sets the length; d.mu is held.
func (d *memData) resize(n int64) error {
	if n < 0 || n > d.max {
		return fmt.Errorf("%s: length %d outside [0, %d]: %w", d.name, n, d.max, blockdev.ErrNoSpace)
	}
	if n <= int64(len(d.b)) {
		clear(d.b[n:])
		d.b = d.b[:n]
		return nil
	}
	if n <= int64(cap(d.b)) {
		d.b = d.b[:n]
		return nil
	}
	nb := make([]byte, n, max(n, min(d.max, int64(cap(d.b))*2)))
	copy(nb, d.b)
	d.b = nb
	return nil
}

// Size returns the length.
func (f *MemFile) Size() (int64, error) {
	if err := f.open(); err != nil {
		return 0, err
	}
	f.d.mu.RLock()
	defer f.d.mu.RUnlock()
	return int64(len(f.d.b)), nil
}

// Truncate sets the length.
func (f *MemFile) Truncate(n int64) error {
	if err := f.open(); err != nil {
		return err
	}
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	return f.d.resize(n)
}

// Sync counts the call.
func (f *MemFile) Sync() error {
	if err := f.open(); err != nil {
		return err
	}
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	f.d.syncs++
	return nil
}

// Punch zeroes [off, off+n) within the length.
func (f *MemFile) Punch(off, n int64) error {
	if err := f.open(); err != nil {
		return err
	}
	if off < 0 || n < 0 {
		return fmt.Errorf("%s: punch %d+%d", f.d.name, off, n)
	}
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	if off < int64(len(f.d.b)) {
		clear(f.d.b[off:min(int64(len(f.d.b)), off+n)])
	}
	return nil
}

// Close closes this handle; the bytes stay for Reopen.
func (f *MemFile) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return fmt.Errorf("%s: %w", f.d.name, os.ErrClosed)
	}
	f.closed = true
	return nil
}

// Closed reports whether this handle was closed.
func (f *MemFile) Closed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closed
}

// Name returns the name given to NewMemFile.
func (f *MemFile) Name() string { return f.d.name }

// Identity is shared by every handle of the same bytes.
func (f *MemFile) Identity() string { return fmt.Sprintf("memfile %p", f.d) }

// MemNames is an image.Names over MemFiles: the files an image may name,
// by name. Open hands out a new handle of the file; Create adds one.
type MemNames struct {
	mu    sync.Mutex
	Files map[string]*MemFile
}

var _ image.Names = (*MemNames)(nil)

// ErrNoMemFile is returned by MemNames.Open for a name it does not hold.
var ErrNoMemFile = errors.New("no such in-memory file")

// NewMemNames returns a MemNames holding files, by their names.
func NewMemNames(files ...*MemFile) *MemNames {
	n := &MemNames{Files: map[string]*MemFile{}}
	for _, f := range files {
		n.Files[f.Name()] = f
	}
	return n
}

// Open returns a new handle of the file called name.
func (n *MemNames) Open(from image.File, name string, readOnly bool) (image.File, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	f, ok := n.Files[name]
	if !ok {
		return nil, fmt.Errorf("%s names %q: %w", from.Name(), name, ErrNoMemFile)
	}
	return f.Reopen(), nil
}

// Create adds an empty file called name and returns a handle of it.
func (n *MemNames) Create(from image.File, name string) (image.File, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.Files[name]; ok {
		return nil, fmt.Errorf("create %q: %w", name, os.ErrExist)
	}
	f := NewMemFile(name, nil)
	n.Files[name] = f
	return f.Reopen(), nil
}
