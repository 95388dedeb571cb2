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
	t, tok := d.(Trimmer)
	z, zok := d.(ZeroWriter)
	e, eok := d.(Extenter)
	st, sz, se := sectionTrimmer{s, t}, sectionZeroer{s, z}, sectionExtenter{s, e}
	switch {
	case tok && zok && eok:
		return struct {
			*section
			sectionTrimmer
			sectionZeroer
			sectionExtenter
		}{s, st, sz, se}
	case tok && zok:
		return struct {
			*section
			sectionTrimmer
			sectionZeroer
		}{s, st, sz}
	case tok && eok:
		return struct {
			*section
			sectionTrimmer
			sectionExtenter
		}{s, st, se}
	case zok && eok:
		return struct {
			*section
			sectionZeroer
			sectionExtenter
		}{s, sz, se}
	case tok:
		return struct {
			*section
			sectionTrimmer
		}{s, st}
	case zok:
		return struct {
			*section
			sectionZeroer
		}{s, sz}
	case eok:
		return struct {
			*section
			sectionExtenter
		}{s, se}
	}
	return s
}

type section struct {
	d          Device
	base, size int64
	closed     atomic.Bool
}

var _ Describer = (*section)(nil)

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

type sectionTrimmer struct {
	s *section
	t Trimmer
}

func (t sectionTrimmer) Trim(off, n int64) error {
	if err := t.s.check(off, n); err != nil {
		return err
	}
	return t.t.Trim(t.s.base+off, n)
}

type sectionZeroer struct {
	s *section
	z ZeroWriter
}

func (z sectionZeroer) WriteZeroes(off, n int64, mayTrim bool) error {
	if err := z.s.check(off, n); err != nil {
		return err
	}
	return z.z.WriteZeroes(z.s.base+off, n, mayTrim)
}

type sectionExtenter struct {
	s *section
	e Extenter
}

func (e sectionExtenter) Extents(off, n int64) ([]Extent, error) {
	if err := e.s.check(off, n); err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, nil
	}
	ext, err := e.e.Extents(e.s.base+off, n)
	if err != nil {
		return nil, err
	}
	for i := range ext {
		ext[i].Off -= e.s.base
	}
	return ext, nil
}
