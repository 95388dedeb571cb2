package blockmap

import (
	"errors"

	"golang.org/x/sys/unix"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// StatusRules say how a format's blocks read as qemu's block status,
// which the Map's LayerStatus reports (see the package comment). The
// zero value suits a differencing disk that qemu would read block by
// block: data blocks (and the sectors of partial blocks in the file) are
// allocated data at their file offset, zero blocks allocated zeroes, and
// unallocated blocks (and the other sectors) are the parent's runs.
type StatusRules struct {
	// Whole: qemu has no block status for the format (vhdx): every run
	// is allocated data, at no offset.
	Whole bool
	// OwnZero: unallocated blocks are the image's own zeroes, allocated
	// (qemu's vpc and vdi report them so).
	OwnZero bool
	// Backing: without a parent, unallocated blocks read as zeroes
	// (qemu's supports_backing: vmdk); with none of OwnZero and Backing
	// they say nothing of their bytes.
	Backing bool
	// Recurse: a data block over a hole of its file reads as zeroes and
	// stays data (qemu's BDRV_BLOCK_RECURSE: a fixed VHD, a static VDI,
	// a flat vmdk extent).
	Recurse bool
	// Compressed: data blocks are stored compressed, at no offset (a
	// streamOptimized vmdk extent).
	Compressed bool
}

// maxStatusBlocks bounds the blocks one LayerStatus call looks at.
const maxStatusBlocks = 1 << 16

var _ image.Layer = (*Map)(nil)

// LayerStatus describes the run of this Map alone that starts at off, no
// longer than n bytes, by the Config's StatusRules: a run of blocks of
// one state (data blocks only while they follow each other in the file),
// or of the sectors of a partial block that are all in the file or all
// not.
func (m *Map) LayerStatus(off, n int64) (image.Status, error) {
	if n <= 0 {
		return image.Status{}, image.ErrNoStatus
	}
	if err := m.guard(off, n, false); err != nil {
		return image.Status{}, err
	}
	r := m.c.Status
	if r.Whole {
		return image.Status{Len: n, Allocated: true, Data: true}, nil
	}
	bs := m.c.BlockSize
	blk, end := off/bs, off+n
	m.mu.Lock()
	e, err := m.entry(blk)
	var rs []run
	stop := min(end, (blk+1)*bs)
	switch {
	case err != nil:
	case e.State == Partial:
		rs, err = m.runs(blk, e, off, stop-off)
	default:
		for k := int64(1); stop < end && k < maxStatusBlocks; k++ {
			next, nerr := m.entry(blk + k)
			if nerr != nil || next.State != e.State || e.State == Data && !r.Compressed && next.Off != e.Off+k*bs {
				break
			}
			stop = min(end, (blk+k+1)*bs)
		}
	}
	m.mu.Unlock()
	if err != nil {
		return image.Status{}, err
	}
	in := off - blk*bs
	st := image.Status{Len: stop - off}
	switch e.State {
	case Data:
		m.dataStatus(&st, e.Off+in)
	case Zero:
		st.Allocated, st.Zero = true, true
	case Unallocated:
		m.unallocatedStatus(&st)
	case Partial:
		st.Len = rs[0].n
		if rs[0].in {
			m.dataStatus(&st, e.Off+in)
		} else {
			// The sectors not in the file are the parent's, whatever
			// the rules say of unallocated blocks.
			st.Zero = r.Backing && m.parent == nil
		}
	}
	return st, nil
}

// dataStatus fills st for data at file offset off: allocated data there,
// refined by the file's holes (Recurse), or compressed.
func (m *Map) dataStatus(st *image.Status, off int64) {
	r := m.c.Status
	st.Allocated, st.Data = true, true
	if r.Compressed {
		st.Compressed = true
		return
	}
	st.File, st.Offset = m.f, off
	if !r.Recurse {
		return
	}
	if l, hole, ok := fileRun(m.f, off, st.Len); ok {
		st.Len = l
		if hole {
			st.Zero = true
		}
	}
}

// unallocatedStatus fills st for unallocated blocks.
func (m *Map) unallocatedStatus(st *image.Status) {
	r := m.c.Status
	switch {
	case r.OwnZero:
		st.Allocated, st.Zero = true, true
	case r.Backing && m.parent == nil:
		st.Zero = true
	}
}

// fileRun returns the length of the run of f at off (at most n bytes)
// that is all data or all hole, and whether it is a hole, as qemu's
// file-posix block status finds it (SEEK_DATA, SEEK_HOLE; past the end
// of the file is a hole). ok is false when f is no local file or says
// nothing: then its bytes count as data.
func fileRun(f image.File, off, n int64) (l int64, hole, ok bool) {
	o, isOS := f.(osFile)
	if !isOS {
		return n, false, false
	}
	fd := int(o.OS().Fd())
	data, err := unix.Seek(fd, off, unix.SEEK_DATA)
	switch {
	case errors.Is(err, unix.ENXIO):
		return n, true, true
	case err != nil:
		return n, false, false
	case data > off:
		return min(data-off, n), true, true
	}
	h, err := unix.Seek(fd, off, unix.SEEK_HOLE)
	if err != nil {
		return n, false, false
	}
	return min(max(h-off, 1), n), false, true
}

// BackingDevice returns the layer below, nil without one (image.Layer).
func (m *Map) BackingDevice() blockdev.Device { return m.parent }
