package image

import (
	"errors"
	"fmt"

	"vdisk/internal/blockdev"
)

// Status is what one layer of an image says of a run of its bytes, by
// itself, without its backing file: qemu's block status. It is the one
// source of `vdisk map`, commit, rebase, compare -s and measure.
type Status struct {
	// Len is the run's length from the offset asked about: at least one
	// byte, at most what was asked.
	Len int64
	// Allocated says the layer decides the run's bytes (its data, or
	// zeroes of its own). Unallocated runs come from the backing file,
	// or read as zeroes without one.
	Allocated bool
	// Data says the layer's file stores the bytes (compressed or not).
	Data bool
	// Zero says the run reads as zeroes.
	Zero bool
	// Compressed says the bytes are stored compressed (no Offset).
	Compressed bool
	// File, when not nil, is the file that holds the run's bytes at
	// Offset, as they are (qemu's "offset" of map).
	File   File
	Offset int64
	// Recurse asks the caller to refine Zero from File's own holes at
	// Offset (qemu's BDRV_BLOCK_RECURSE: a data cluster over a hole of a
	// preallocated file reads as zeroes).
	Recurse bool
}

// Layer is an opened image that describes its own runs. Every format's
// Device implements it; a Device that does not is one raw layer whose
// bytes are its own (each run allocated, holes from blockdev.Extents
// read as zeroes, Offset the run's own offset).
type Layer interface {
	blockdev.Device
	// LayerStatus describes the run of this layer alone that starts at
	// off, no longer than n bytes (n > 0, off+n within Size). Where the
	// layer has no backing file, an unallocated run's Zero says whether
	// qemu's format reads it as zeroes of its own (qcow2, vmdk: yes).
	LayerStatus(off, n int64) (Status, error)
	// BackingDevice returns the opened image below this one, nil when
	// there is none or it was not opened (NoBacking).
	BackingDevice() blockdev.Device
}

// MapEntry is one run of an image's chain, as `vdisk map` prints it and
// qemu-img map --output=json does: where the bytes come from.
type MapEntry struct {
	Start, Length int64
	// Depth is the layer that holds the run: 0 the image itself, 1 its
	// backing file and so on; for a run no layer holds, the depth of the
	// last layer asked.
	Depth int
	// Present says some layer holds the run (allocated).
	Present bool
	Zero    bool
	Data    bool
	// Compressed says the layer stores the run compressed.
	Compressed bool
	// HasOffset says the run's bytes are in File at Offset as they are.
	HasOffset bool
	Offset    int64
	// File names the file at Offset ("" without one).
	File string
}

// ErrNoStatus is returned by a Layer asked about an empty or outside
// range.
var ErrNoStatus = errors.New("image: no status for an empty range")

// LayerStatusOf asks dev about the run at off as one layer: dev's own
// LayerStatus when it is a Layer, else dev as a raw layer.
func LayerStatusOf(dev blockdev.Device, off, n int64) (Status, error) {
	if n <= 0 {
		return Status{}, ErrNoStatus
	}
	if err := blockdev.CheckRange(off, n, dev.Size()); err != nil {
		return Status{}, err
	}
	if l, ok := dev.(Layer); ok {
		st, err := l.LayerStatus(off, n)
		if err != nil {
			return Status{}, err
		}
		if st.Len <= 0 || st.Len > n {
			return Status{}, fmt.Errorf("image: a layer described %d bytes at %d, asked for %d", st.Len, off, n)
		}
		return st, nil
	}
	es, err := blockdev.Extents(dev, off, n)
	if err != nil {
		return Status{}, err
	}
	if len(es) == 0 || es[0].Off != off || es[0].Len <= 0 {
		return Status{}, fmt.Errorf("image: no extents at %d", off)
	}
	e := es[0]
	// A raw layer decides every byte: a hole of its storage reads as
	// zeroes, allocated bytes are data (zero too when the device knows
	// they are), as qemu's file driver says.
	return Status{
		Len:       min(e.Len, n),
		Allocated: true,
		Data:      e.Flags&blockdev.ExtentHole == 0,
		Zero:      e.Flags&blockdev.ExtentZero != 0,
	}, nil
}

// FileExtenter is a File that knows its own holes (a local file:
// SEEK_DATA and SEEK_HOLE). Extents describes [off, off+n) of the file,
// within its length, as blockdev.Extenter does.
type FileExtenter interface {
	Extents(off, n int64) ([]blockdev.Extent, error)
}

// refine narrows a layer's data run that asked for it (Recurse) by the
// holes of the file that holds it, as qemu does for BDRV_BLOCK_RECURSE:
// a run past the file's end, or over a hole that runs to the end, reads
// as zeroes; otherwise the run stops where the file's first extent does
// and is zero when that extent is a hole. Errors only leave st as it is:
// this is extra information, as qemu treats it.
func refine(st Status) Status {
	fe, ok := st.File.(FileExtenter)
	if !ok || !st.Data || st.Zero {
		return st
	}
	size, err := st.File.Size()
	if err != nil {
		return st
	}
	if st.Offset >= size {
		st.Zero = true
		return st
	}
	es, err := fe.Extents(st.Offset, min(st.Len, size-st.Offset))
	if err != nil || len(es) == 0 || es[0].Off != st.Offset || es[0].Len <= 0 {
		return st
	}
	e := es[0]
	hole := e.Flags&blockdev.ExtentZero != 0
	if hole && st.Offset+e.Len >= size {
		st.Zero = true
		return st
	}
	st.Len = min(st.Len, e.Len)
	st.Zero = hole
	return st
}

// backingOf returns dev's backing device, nil when it has none.
func backingOf(dev blockdev.Device) blockdev.Device {
	if l, ok := dev.(Layer); ok {
		return l.BackingDevice()
	}
	return nil
}

// StatusAt describes the run of dev's whole chain that starts at off, no
// longer than n bytes, as qemu-img map does: from the first layer down
// that holds it, or, when none does, as the last layer asked says.
func StatusAt(dev blockdev.Device, off, n int64) (MapEntry, error) {
	depth := 0
	for {
		st, err := LayerStatusOf(dev, off, n)
		if err != nil {
			return MapEntry{}, err
		}
		if st.Recurse && st.File != nil {
			st = refine(st)
		}
		n = st.Len
		if !st.Allocated {
			b := backingOf(dev)
			switch {
			case b != nil && off < b.Size():
				dev, depth = b, depth+1
				n = min(n, b.Size()-off)
				continue
			case b != nil:
				st.Zero = true // past the end of the backing file
			}
		}
		e := MapEntry{Start: off, Length: n, Depth: depth, Present: st.Allocated, Zero: st.Zero, Data: st.Data, Compressed: st.Compressed}
		if _, ok := dev.(Layer); !ok {
			// A raw layer: its bytes are at their own offsets.
			e.HasOffset, e.Offset, e.File = true, off, deviceName(dev)
		} else if st.File != nil {
			e.HasOffset, e.Offset, e.File = true, st.Offset, st.File.Name()
		}
		return e, nil
	}
}

// deviceName names the file of a raw layer: its path, or its Name.
func deviceName(dev blockdev.Device) string {
	switch d := dev.(type) {
	case interface{ Path() string }:
		return d.Path()
	case interface{ Name() string }:
		return d.Name()
	}
	return ""
}

// AllocatedAbove reports whether the run of top at off (no longer than
// n; its length is returned) is allocated in top or in any layer of its
// chain above base (qemu's bdrv_is_allocated_above). A nil base means
// the whole chain. base must be in top's chain.
func AllocatedAbove(top, base blockdev.Device, off, n int64) (bool, int64, error) {
	for dev := top; dev != nil && dev != base; dev = backingOf(dev) {
		if off >= dev.Size() {
			break
		}
		st, err := LayerStatusOf(dev, off, min(n, dev.Size()-off))
		if err != nil {
			return false, 0, err
		}
		if st.Allocated {
			return true, st.Len, nil
		}
		n = st.Len
	}
	return false, n, nil
}

// mergeable reports whether next continues cur as one map entry (the
// rule of qemu-img map: the same flags, depth and file, and contiguous
// offsets).
func mergeable(cur, next MapEntry) bool {
	if cur.Length == 0 || cur.Start+cur.Length != next.Start {
		return false
	}
	if cur.Zero != next.Zero || cur.Data != next.Data || cur.Compressed != next.Compressed ||
		cur.Depth != next.Depth || cur.Present != next.Present || cur.HasOffset != next.HasOffset ||
		cur.File != next.File {
		return false
	}
	return !cur.HasOffset || cur.Offset+cur.Length == next.Offset
}

// mapProbe is the most Map asks of a chain at once, as qemu-img map.
const mapProbe = 1 << 30

// Map calls fn for each entry of dev's map over [off, off+n), adjacent
// runs merged as qemu-img map merges them.
func Map(dev blockdev.Device, off, n int64, fn func(MapEntry) error) error {
	if err := blockdev.CheckRange(off, n, dev.Size()); err != nil {
		return err
	}
	var cur MapEntry
	for end := off + n; off < end; {
		// qemu-img map asks about at most 1 GiB at a time.
		e, err := StatusAt(dev, off, min(end-off, mapProbe))
		if err != nil {
			return err
		}
		if mergeable(cur, e) {
			cur.Length += e.Length
		} else {
			if cur.Length > 0 {
				if err := fn(cur); err != nil {
					return err
				}
			}
			cur = e
		}
		off += e.Length
	}
	if cur.Length > 0 {
		return fn(cur)
	}
	return nil
}
