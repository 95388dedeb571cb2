package blockdev

import (
	"sync"
)

// memPage is the granularity at which Mem allocates storage.
const memPage = 64 << 10

// Mem is a sparse Device in memory: pages are allocated on first write and
// released by Trim. It is safe for concurrent use; a mutex guards the page
// table, and data copies happen under it (Mem is for tests and small disks).
type Mem struct {
	size int64

	mu     sync.RWMutex
	pages  map[int64][]byte // page index → memPage bytes
	closed bool
}

var (
	_ Device     = (*Mem)(nil)
	_ Trimmer    = (*Mem)(nil)
	_ ZeroWriter = (*Mem)(nil)
	_ Extenter   = (*Mem)(nil)
)

// NewMem returns an all-zero memory device of size bytes.
func NewMem(size int64) *Mem {
	return &Mem{size: size, pages: make(map[int64][]byte)}
}

// Size returns the device's size.
func (m *Mem) Size() int64 { return m.size }

// ReadAt reads len(p) bytes at off.
func (m *Mem) ReadAt(p []byte, off int64) (int, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return 0, ErrClosed
	}
	if err := CheckRange(off, int64(len(p)), m.size); err != nil {
		return 0, err
	}
	n := 0
	for n < len(p) {
		pg, po := (off+int64(n))/memPage, (off+int64(n))%memPage
		c := min(len(p)-n, int(memPage-po))
		if b := m.pages[pg]; b != nil {
			copy(p[n:n+c], b[po:])
		} else {
			clear(p[n : n+c])
		}
		n += c
	}
	return n, nil
}

// WriteAt writes p at off.
func (m *Mem) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0, ErrClosed
	}
	if err := CheckRange(off, int64(len(p)), m.size); err != nil {
		return 0, err
	}
	n := 0
	for n < len(p) {
		pg, po := (off+int64(n))/memPage, (off+int64(n))%memPage
		c := min(len(p)-n, int(memPage-po))
		b := m.pages[pg]
		if b == nil {
			if IsZero(p[n : n+c]) {
				n += c
				continue
			}
			b = make([]byte, memPage)
			m.pages[pg] = b
		}
		copy(b[po:], p[n:n+c])
		n += c
	}
	return n, nil
}

// Trim releases whole pages inside [off, off+n) and zeroes the partial ones.
func (m *Mem) Trim(off, n int64) error { return m.WriteZeroes(off, n, true) }

// WriteZeroes zeroes [off, off+n). Mem always releases whole pages: memory
// is not storage that needs to stay allocated.
func (m *Mem) WriteZeroes(off, n int64, _ bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	if err := CheckRange(off, n, m.size); err != nil {
		return err
	}
	end := off + n
	for off < end {
		pg, po := off/memPage, off%memPage
		c := min(end-off, memPage-po)
		if b := m.pages[pg]; b != nil {
			if c == memPage {
				delete(m.pages, pg)
			} else {
				clear(b[po : po+c])
			}
		}
		off += c
	}
	return nil
}

// Extents reports unallocated pages as holes that read as zeroes.
func (m *Mem) Extents(off, n int64) ([]Extent, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return nil, ErrClosed
	}
	if err := CheckRange(off, n, m.size); err != nil {
		return nil, err
	}
	var out []Extent
	end := off + n
	for off < end {
		pg, po := off/memPage, off%memPage
		c := min(end-off, memPage-po)
		var f ExtentFlags
		if m.pages[pg] == nil {
			f = ExtentHole | ExtentZero
		}
		if k := len(out) - 1; k >= 0 && out[k].Flags == f {
			out[k].Len += c
		} else {
			out = append(out, Extent{Off: off, Len: c, Flags: f})
		}
		off += c
	}
	return out, nil
}

// Flush does nothing: memory has no stable storage to reach.
func (m *Mem) Flush() error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return ErrClosed
	}
	return nil
}

// Close releases the memory.
func (m *Mem) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	m.closed = true
	m.pages = nil
	return nil
}
