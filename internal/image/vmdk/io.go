package vmdk

import (
	"errors"
	"fmt"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
	"vdisk/internal/image/blockmap"
)

// Bounds of one Extents call: the extents it returns and the grains it
// looks at.
const (
	maxReportExtents = 4096
	maxExtentGrains  = 1 << 16
)

// check refuses calls after Close and ranges outside the disk.
func (img *Image) check(off, n int64) error {
	if img.closed.Load() {
		return blockdev.ErrClosed
	}
	return blockdev.CheckRange(off, n, img.size)
}

// pieces calls fn for each part of [off, off+n) inside one extent and,
// for compressed extents, one grain, in order, and returns how many bytes
// from off the parts that succeeded cover (the blockmap core's contract
// for n on error).
func (img *Image) pieces(off, n int64, fn func(e *extent, pos, c int64) error) (int64, error) {
	for start, end := off, off+n; off < end; {
		e := img.extents[img.find(off)]
		c := min(end, (e.start+e.sectors)*sectorSize) - off
		if e.sp != nil && e.sp.compressed {
			gb := e.sp.grainBytes
			in := off - e.start*sectorSize
			c = min(c, gb-in%gb)
		}
		if err := fn(e, off, c); err != nil {
			return off - start, err
		}
		off += c
	}
	return n, nil
}

// ReadAt reads len(p) bytes at off; on error n is the length of the
// prefix of p that was filled.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	if err := img.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	n, err := img.pieces(off, int64(len(p)), func(e *extent, pos, c int64) error {
		return img.read(p[pos-off:pos-off+c], e, pos)
	})
	return int(n), err
}

// read fills b from guest offset pos inside extent e (and one grain).
func (img *Image) read(b []byte, e *extent, pos int64) error {
	in := pos - e.start*sectorSize
	if e.sp == nil || !e.sp.compressed {
		_, err := e.m.ReadAt(b, in)
		return err
	}
	s := e.sp
	g := in / s.grainBytes
	ge, err := e.m.Lookup(g)
	if err != nil {
		return err
	}
	switch ge.State {
	case blockmap.Unallocated:
		return img.readParent(b, pos)
	case blockmap.Zero:
		clear(b)
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	data, err := s.readCompressed(g, ge.Off)
	if err == nil {
		copy(b, data[in%s.grainBytes:])
	}
	return err
}

// readParent fills b with the parent's bytes at off (zeroes without a
// parent, and beyond its end).
func (img *Image) readParent(b []byte, off int64) error {
	if err := image.ReadParent(img.parent, b, off); err != nil {
		return fmt.Errorf("vmdk: %w", err)
	}
	return nil
}

// WriteAt writes len(p) bytes at off, allocating grains as needed; on
// error n is the length of the prefix of p that was written.
func (img *Image) WriteAt(p []byte, off int64) (int, error) {
	if err := img.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	if img.readOnly {
		return 0, blockdev.ErrReadOnly
	}
	if err := img.changeCID(); err != nil {
		return 0, err
	}
	n, err := img.pieces(off, int64(len(p)), func(e *extent, pos, c int64) error {
		return img.write(p[pos-off:pos-off+c], e, pos)
	})
	return int(n), err
}

// write stores b at guest offset pos inside extent e (and one grain).
func (img *Image) write(b []byte, e *extent, pos int64) error {
	in := pos - e.start*sectorSize
	switch {
	case e.readOnly:
		return fmt.Errorf("vmdk: extent is RDONLY: %w", blockdev.ErrReadOnly)
	case e.kind == kindZero:
		return fmt.Errorf("vmdk: a ZERO extent cannot store data: %w", blockdev.ErrReadOnly)
	}
	_, err := e.m.WriteAt(b, in)
	return err
}

// Trim makes [off, off+n) read as zeroes, releasing the storage of the
// allocated part (see WriteZeroes).
func (img *Image) Trim(off, n int64) error { return img.WriteZeroes(off, n, true) }

// WriteZeroes makes [off, off+n) read as zeroes, extent by extent through
// their Maps: allocated grains and flat extents are punched (mayTrim) or
// zeroed in place, unallocated grains of a disk with a parent get zeroes
// written; ZERO extents already read as zeroes.
func (img *Image) WriteZeroes(off, n int64, mayTrim bool) error {
	if err := img.check(off, n); err != nil {
		return err
	}
	if img.readOnly {
		return blockdev.ErrReadOnly
	}
	if err := img.changeCID(); err != nil {
		return err
	}
	_, err := img.pieces(off, n, func(e *extent, pos, c int64) error {
		switch {
		case e.kind == kindZero:
			return nil
		case e.readOnly:
			return fmt.Errorf("vmdk: extent is RDONLY: %w", blockdev.ErrReadOnly)
		}
		return e.m.WriteZeroes(pos-e.start*sectorSize, c, mayTrim)
	})
	return err
}

// Extents describes [off, off+n): ZERO extents, zeroed grains,
// unallocated grains without a parent and holes of flat extent files are
// holes that read as zeroes;
// unallocated grains with a parent have the parent's extents; the rest is
// data.
func (img *Image) Extents(off, n int64) ([]blockdev.Extent, error) {
	if err := img.check(off, n); err != nil {
		return nil, err
	}
	var out []blockdev.Extent
	add := func(o, l int64, f blockdev.ExtentFlags) { out = blockdev.AppendExtent(out, o, l, f) }
	seen := 0
	errStop := errors.New("stop")
	_, err := img.pieces(off, n, func(e *extent, pos, c int64) error {
		if len(out) >= maxReportExtents || seen >= maxExtentGrains {
			return errStop
		}
		seen++
		in := pos - e.start*sectorSize
		if e.sp == nil || !e.sp.compressed {
			ext, err := e.m.Extents(in, c)
			covered := in
			for _, x := range ext {
				add(x.Off+e.start*sectorSize, x.Len, x.Flags)
				covered = x.Off + x.Len
			}
			if err == nil && covered < in+c {
				return errStop // the Map's bounds cut it short
			}
			return err
		}
		ge, err := e.m.Lookup(in / e.sp.grainBytes)
		switch {
		case err != nil:
			return err
		case ge.State == blockmap.Data:
			add(pos, c, 0)
		case ge.State == blockmap.Zero:
			add(pos, c, blockdev.ExtentHole|blockdev.ExtentZero)
		default:
			return blockmap.ParentExtents(img.parent, pos, c, add)
		}
		return nil
	})
	if err != nil && err != errStop {
		return nil, err
	}
	return out, nil
}

var _ image.Layer = (*Image)(nil)

// LayerStatus describes the run of this image alone at off (qemu's vmdk
// block status): inside one extent, as its Map reports it (see serve);
// a ZERO extent is allocated zeroes.
func (img *Image) LayerStatus(off, n int64) (image.Status, error) {
	if n <= 0 {
		return image.Status{}, image.ErrNoStatus
	}
	if err := img.check(off, n); err != nil {
		return image.Status{}, err
	}
	e := img.extents[img.find(off)]
	base := e.start * sectorSize
	return e.m.LayerStatus(off-base, min(n, base+e.sectors*sectorSize-off))
}

// BackingDevice returns the opened parent, nil without one.
func (img *Image) BackingDevice() blockdev.Device { return img.parent }
