package blockmap

import (
	"fmt"
	"maps"
	"slices"

	"vdisk/internal/blockdev"
)

// Flush makes every completed write durable: the data first, then the
// bitmaps, the bytes placed with new blocks and the format's metadata,
// then the table units that reach them.
func (m *Map) Flush() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return blockdev.ErrClosed
	}
	if m.c.ReadOnly {
		return nil
	}
	if err := m.sync(); err != nil {
		return err
	}
	wrote := false
	for blk, bm := range m.bitmaps {
		if !bm.dirty {
			continue
		}
		if _, err := m.f.WriteAt(bm.b, bm.off); err != nil {
			return fmt.Errorf("%s: write sector bitmap of block %d: %w", m.c.Name, blk, noSpace(err))
		}
		bm.dirty, wrote = false, true
	}
	for _, pl := range m.meta {
		if _, err := m.f.WriteAt(pl.Meta, pl.MetaOff); err != nil {
			return fmt.Errorf("%s: write block metadata at %#x: %w", m.c.Name, pl.MetaOff, noSpace(err))
		}
		wrote = true
	}
	m.meta = nil
	if m.grown {
		if n, err := m.f.Size(); err != nil || n < m.end {
			if err == nil {
				err = m.f.Truncate(m.end)
			}
			if err != nil {
				return fmt.Errorf("%s: extend the file to %d: %w", m.c.Name, m.end, noSpace(err))
			}
		}
		if err := m.c.Codec.Commit(m.end); err != nil {
			return err
		}
		m.grown, wrote = false, true
	}
	if wrote {
		if err := m.sync(); err != nil {
			return err
		}
	}
	if len(m.dirty) == 0 {
		return nil
	}
	for _, u := range slices.Sorted(maps.Keys(m.dirty)) {
		if err := m.writeUnit(u); err != nil {
			return err
		}
		delete(m.dirty, u)
	}
	return m.sync()
}

// writeUnit writes table unit u where it lives. Called with mu held.
func (m *Map) writeUnit(u int64) error {
	lo := u * m.c.Unit
	var b []byte
	if m.c.Lazy {
		b = m.units[u]
	} else {
		b = m.table[lo:min(lo+m.c.Unit, int64(len(m.table)))]
	}
	offs := []int64{m.c.TableOff + lo}
	if l, ok := m.c.Codec.(Locator); ok {
		var err error
		if offs, err = l.TableAt(u); err != nil {
			return err
		}
	}
	for _, off := range offs {
		if _, err := m.f.WriteAt(b, off); err != nil {
			return fmt.Errorf("%s: write %s at %#x: %w", m.c.Name, m.c.TableName, off, noSpace(err))
		}
	}
	return nil
}

// sync makes every write to the file durable.
func (m *Map) sync() error {
	if err := m.f.Sync(); err != nil {
		return fmt.Errorf("%s: sync: %w", m.c.Name, err)
	}
	return nil
}

// Close flushes every change and releases the file and the parent.
func (m *Map) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return blockdev.ErrClosed
	}
	m.mu.Unlock()
	var err error
	if !m.c.ReadOnly {
		err = m.Flush()
	}
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	if m.c.Borrowed {
		return err
	}
	if m.parent != nil {
		m.parent.Close()
	}
	if cerr := m.f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("%s: close: %w", m.c.Name, cerr)
	}
	return err
}
