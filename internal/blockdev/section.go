package blockdev

import (
	"fmt"
	"sync/atomic"
)

// Section returns the window [off, off+n) of d as a Device of n bytes (a
// partition, say). It has Trimmer, ZeroWriter and Extenter exactly when d
// has them, and d's Info (block sizes lowered to 512 when off is not
// aligned to them).
//
// The result owns d: its Close flushes and closes d. It is safe for
// concurrent use as far as d is.
//
// Section panics unless CheckRange(off, n, d.Size()) succeeds: a caller
// with untrusted bounds checks them first.
func Section(d Device, off, n int64) Device {
	if err := CheckRange(off, n, d.Size()); err != nil {
		panic(fmt.Sprintf("blockdev.Section: %v", err))
	}
	s := &section{d: d, base: off, size: n}
	var c Caps
	c.Describer = s
	if _, ok := d.(Trimmer); ok {
		c.Trimmer = s
	}
	if _, ok := d.(ZeroWriter); ok {
		c.ZeroWriter = s
	}
	if _, ok := d.(Extenter); ok {
		c.Extenter = s
	}
	return WithCaps(s, c)
}

// section implements every capability; Section exposes those of the inner
// device only.
type section struct {
	d          Device
	base, size int64
	closed     atomic.Bool
}

var (
	_ Trimmer    = (*section)(nil)
	_ ZeroWriter = (*section)(nil)
	_ Extenter   = (*section)(nil)
	_ Describer  = (*section)(nil)
)

func (s *section) Size() int64 { return s.size }

// check refuses calls after Close and ranges outside the window.
func (s *section) check(off, n int64) error {
	if s.closed.Load() {
		return ErrClosed
	}
	return CheckRange(off, n, s.size)
}

func (s *section) ReadAt(p []byte, off int64) (int, error) {
	if err := s.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	return s.d.ReadAt(p, s.base+off)
}

func (s *section) WriteAt(p []byte, off int64) (int, error) {
	if err := s.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	return s.d.WriteAt(p, s.base+off)
}

func (s *section) Flush() error {
	if s.closed.Load() {
		return ErrClosed
	}
	return s.d.Flush()
}

func (s *section) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return ErrClosed
	}
	return s.d.Close()
}

// Info is the inner device's Info, with block sizes the window's offset is
// not aligned to lowered to 512.
func (s *section) Info() Info {
	in := InfoOf(s.d)
	if s.base%int64(in.LogicalBlockSize) != 0 {
		in.LogicalBlockSize = 512
	}
	if s.base%int64(in.PhysicalBlockSize) != 0 {
		in.PhysicalBlockSize = max(512, in.LogicalBlockSize)
	}
	return in
}

// Trim forwards to the inner device, which Section made sure is a Trimmer.
func (s *section) Trim(off, n int64) error {
	if err := s.check(off, n); err != nil {
		return err
	}
	return s.d.(Trimmer).Trim(s.base+off, n)
}

// WriteZeroes forwards to the inner device, which is a ZeroWriter.
func (s *section) WriteZeroes(off, n int64, mayTrim bool) error {
	if err := s.check(off, n); err != nil {
		return err
	}
	return s.d.(ZeroWriter).WriteZeroes(s.base+off, n, mayTrim)
}

// Extents forwards to the inner device, which is an Extenter.
func (s *section) Extents(off, n int64) ([]Extent, error) {
	if err := s.check(off, n); err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, nil
	}
	ext, err := s.d.(Extenter).Extents(s.base+off, n)
	if err != nil {
		return nil, err
	}
	for i := range ext {
		ext[i].Off -= s.base
	}
	return ext, nil
}
