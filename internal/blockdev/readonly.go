package blockdev

import "sync/atomic"

// ReadOnly returns d as a read-only Device: WriteAt fails with ErrReadOnly,
// Info reports ReadOnly, and Extents is kept when d has it. The result has
// no Trimmer or ZeroWriter: a read-only device cannot discard or zero, and
// says so by lacking the capability.
//
// The result owns d: its Close flushes and closes d. It is safe for
// concurrent use as far as d is.
func ReadOnly(d Device) Device {
	r := &readOnly{d: d}
	c := Caps{Describer: r}
	if _, ok := d.(Extenter); ok {
		c.Extenter = r
	}
	return WithCaps(r, c)
}

// readOnly implements Extents; ReadOnly exposes it only when d has it.
type readOnly struct {
	d      Device
	closed atomic.Bool
}

var (
	_ Describer = (*readOnly)(nil)
	_ Extenter  = (*readOnly)(nil)
)

func (r *readOnly) Size() int64 { return r.d.Size() }

func (r *readOnly) ReadAt(p []byte, off int64) (int, error) {
	if r.closed.Load() {
		return 0, ErrClosed
	}
	return r.d.ReadAt(p, off)
}

func (r *readOnly) WriteAt(p []byte, off int64) (int, error) {
	if r.closed.Load() {
		return 0, ErrClosed
	}
	if err := CheckRange(off, int64(len(p)), r.d.Size()); err != nil {
		return 0, err
	}
	return 0, ErrReadOnly
}

func (r *readOnly) Flush() error {
	if r.closed.Load() {
		return ErrClosed
	}
	return r.d.Flush()
}

func (r *readOnly) Close() error {
	if !r.closed.CompareAndSwap(false, true) {
		return ErrClosed
	}
	return r.d.Close()
}

// Info is d's Info with ReadOnly set.
func (r *readOnly) Info() Info {
	in := InfoOf(r.d)
	in.ReadOnly = true
	return in
}

// Extents forwards to d, which ReadOnly made sure is an Extenter.
func (r *readOnly) Extents(off, n int64) ([]Extent, error) {
	if r.closed.Load() {
		return nil, ErrClosed
	}
	return r.d.(Extenter).Extents(off, n)
}
