package imagetest

import (
	"fmt"
	"io"
	"os"
	"sync"

	"vdisk/internal/image"
)

// cowPage is the unit a COWFile keeps written bytes in.
const cowPage = 4096

// COWFile is an image.File over a template it never changes: written
// pages are kept apart. A fuzz target opens one large template many times
// through it without copying the template for each input.
type COWFile struct {
	mu     sync.Mutex
	name   string
	base   []byte
	limit  int64 // base reads as zeroes from here on (after a truncate)
	size   int64
	pages  map[int64]*[cowPage]byte
	closed bool
}

var _ image.File = (*COWFile)(nil)

// NewCOWFile returns a COWFile called name over base, which the caller
// must not change while the file is in use.
func NewCOWFile(name string, base []byte) *COWFile {
	n := int64(len(base))
	return &COWFile{name: name, base: base, limit: n, size: n, pages: map[int64]*[cowPage]byte{}}
}

// page returns the page holding off for writing, filled from the
// template. It runs with mu held.
func (f *COWFile) page(i int64) *[cowPage]byte {
	p := f.pages[i]
	if p == nil {
		p = new([cowPage]byte)
		if start := i * cowPage; start < f.limit {
			copy(p[:], f.base[start:min(start+cowPage, f.limit)])
		}
		f.pages[i] = p
	}
	return p
}

// ReadAt reads like os.File.ReadAt: short with io.EOF past the end.
func (f *COWFile) ReadAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return 0, os.ErrClosed
	}
	if off < 0 {
		return 0, fmt.Errorf("cowfile: negative offset %d", off)
	}
	if off >= f.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), f.size-off))
	for done := 0; done < n; {
		pos := off + int64(done)
		i, in := pos/cowPage, pos%cowPage
		k := int(min(int64(n-done), cowPage-in))
		dst := p[done : done+k]
		switch pg := f.pages[i]; {
		case pg != nil:
			copy(dst, pg[in:])
		case pos < f.limit:
			c := copy(dst, f.base[pos:min(pos+int64(k), f.limit)])
			clear(dst[c:])
		default:
			clear(dst)
		}
		done += k
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt writes like os.File.WriteAt, extending the file when the write
// ends past it (at most to DefaultMemFileMax).
func (f *COWFile) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return 0, os.ErrClosed
	}
	if off < 0 || off+int64(len(p)) > DefaultMemFileMax {
		return 0, fmt.Errorf("cowfile: write of %d bytes at %d outside [0, %d)", len(p), off, int64(DefaultMemFileMax))
	}
	for done := 0; done < len(p); {
		pos := off + int64(done)
		i, in := pos/cowPage, pos%cowPage
		done += copy(f.page(i)[in:], p[done:])
	}
	f.size = max(f.size, off+int64(len(p)))
	return len(p), nil
}

// Size is the file's length.
func (f *COWFile) Size() (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return 0, os.ErrClosed
	}
	return f.size, nil
}

// Truncate sets the file's length; bytes past a shorter length read as
// zeroes when it grows again.
func (f *COWFile) Truncate(n int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return os.ErrClosed
	}
	if n < 0 || n > DefaultMemFileMax {
		return fmt.Errorf("cowfile: truncate to %d", n)
	}
	if n < f.size {
		for i, pg := range f.pages {
			switch start := i * cowPage; {
			case start >= n:
				delete(f.pages, i)
			case start+cowPage > n:
				clear(pg[n-start:])
			}
		}
		f.limit = min(f.limit, n)
	}
	f.size = n
	return nil
}

// Sync does nothing: the bytes are in memory.
func (f *COWFile) Sync() error { return nil }

// Close releases the handle; further calls fail with os.ErrClosed.
func (f *COWFile) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

// Name is the name given to NewCOWFile.
func (f *COWFile) Name() string { return f.name }
