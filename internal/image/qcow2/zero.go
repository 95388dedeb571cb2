package qcow2

import (
	"fmt"

	"vdisk/internal/blockdev"
)

// Trim discards [off, off+n): whole clusters are released (they read as
// zeroes afterwards), partial ones are overwritten with zeroes.
func (img *Image) Trim(off, n int64) error { return img.zero(off, n, true) }

// WriteZeroes makes [off, off+n) read as zeroes: whole clusters become
// zero clusters (keeping their storage unless mayTrim), partial clusters
// are written.
func (img *Image) WriteZeroes(off, n int64, mayTrim bool) error { return img.zero(off, n, mayTrim) }

// zeroBlock is what partial-cluster zeroing writes.
var zeroBlock = make([]byte, 1<<maxClusterBits)

func (img *Image) zero(off, n int64, mayTrim bool) error {
	if img.readOnly {
		return blockdev.ErrReadOnly
	}
	if err := img.begin(off, n); err != nil {
		return err
	}
	defer img.ioMu.RUnlock()
	end := off + n
	for pos := off; pos < end; {
		c := min(img.cs-pos%img.cs, end-pos)
		var err error
		if c == img.cs && (img.h.version >= 3 || img.backing == nil) {
			err = img.zeroCluster(pos/img.cs, mayTrim)
		} else {
			err = img.zeroPartial(pos, c)
		}
		if err != nil {
			return err
		}
		pos += c
	}
	return nil
}

// zeroPartial zeroes part of a cluster by writing, unless it already reads
// as zeroes.
func (img *Image) zeroPartial(pos, n int64) error {
	img.mu.Lock()
	img.waitCluster(pos / img.cs)
	r, err := img.mapRun(pos, pos+n)
	img.mu.Unlock()
	if err != nil {
		return err
	}
	if r.n == n && (r.kind == kZero || (r.kind == kUnalloc && (img.backing == nil || pos >= img.backingSize))) {
		return nil
	}
	return img.writeCluster(pos/img.cs, pos%img.cs, zeroBlock[:n])
}

// zeroCluster turns guest cluster vc into a zero cluster (v3, extended L2)
// or an unallocated one (v2 without a backing file).
func (img *Image) zeroCluster(vc int64, mayTrim bool) error {
	img.mu.Lock()
	defer img.mu.Unlock()
	img.waitCluster(vc)
	if e, bm, err := img.l2Entry(vc); err != nil {
		return err
	} else if e == 0 && bm == 0 && img.backing == nil {
		return nil // unallocated without a backing file reads as zeroes
	}
	t, err := img.l2Table(vc/img.l2n, true)
	if err != nil {
		return err
	}
	e, _ := img.entryAt(t, vc%img.l2n)
	off := e & offsetMask
	keep := img.h.version >= 3 && !mayTrim && e&flagCompressed == 0 && off != 0 && e&flagCopied != 0
	var ne, nbm uint64
	switch {
	case img.h.extL2():
		nbm = allSubclusters << 32
		if keep {
			ne = off | flagCopied
		}
	case img.h.version >= 3:
		ne = flagZero
		if keep {
			ne |= off | flagCopied
		}
	}
	img.setEntry(t, vc%img.l2n, ne, nbm)
	if !keep {
		img.dropEntry(e)
	}
	return nil
}

// Extents describes [off, off+n): data, zero clusters, and holes, looking
// through the backing chain for unallocated ranges.
func (img *Image) Extents(off, n int64) ([]blockdev.Extent, error) {
	var out []blockdev.Extent
	add := func(o, l int64, f blockdev.ExtentFlags) {
		if k := len(out) - 1; k >= 0 && out[k].Flags == f && out[k].Off+out[k].Len == o {
			out[k].Len += l
			return
		}
		out = append(out, blockdev.Extent{Off: o, Len: l, Flags: f})
	}
	err := img.eachRun(off, n, func(pos int64, r run) (bool, error) {
		switch r.kind {
		case kData, kCompressed:
			add(pos, r.n, 0)
		case kZero:
			if r.entry&offsetMask != 0 {
				add(pos, r.n, blockdev.ExtentZero)
			} else {
				add(pos, r.n, blockdev.ExtentZero|blockdev.ExtentHole)
			}
		case kUnalloc:
			if err := img.backingExtents(pos, r.n, add); err != nil {
				return false, err
			}
		}
		return len(out) < maxExtents, nil
	})
	return out, err
}

// eachRun calls fn for each run of clusters of one kind (mapRun) from off
// on, up to n bytes, with transfers allowed and the metadata unlocked in
// between, until fn returns false.
func (img *Image) eachRun(off, n int64, fn func(pos int64, r run) (bool, error)) error {
	if err := img.begin(off, n); err != nil {
		return err
	}
	defer img.ioMu.RUnlock()
	end := off + n
	for pos := off; pos < end; {
		img.mu.Lock()
		r, err := img.mapRun(pos, end)
		img.mu.Unlock()
		if err != nil {
			return err
		}
		more, err := fn(pos, r)
		if err != nil || !more {
			return err
		}
		pos += r.n
	}
	return nil
}

// maxExtents bounds the extents one Extents call returns; the caller asks
// again from where it stopped.
const maxExtents = 1024

// backingExtents reports [pos, pos+n), unallocated here, as the backing
// file describes it.
func (img *Image) backingExtents(pos, n int64, add func(o, l int64, f blockdev.ExtentFlags)) error {
	end := pos + n
	for pos < end && img.backing != nil && pos < img.backingSize {
		be, err := blockdev.Extents(img.backing, pos, min(end, img.backingSize)-pos)
		if err != nil {
			return err
		}
		for _, x := range be {
			add(x.Off, x.Len, x.Flags)
			pos = x.Off + x.Len
		}
	}
	if pos < end {
		add(pos, end-pos, blockdev.ExtentZero|blockdev.ExtentHole)
	}
	return nil
}

// Depth reports which layer of the backing chain holds each range: 1 for
// this image (data, compressed or zero clusters), the backing file's depth
// plus one where this image leaves it to the backing file, 0 where no
// layer has it.
func (img *Image) Depth(off, n int64) ([]blockdev.DepthExtent, error) {
	var out []blockdev.DepthExtent
	add := func(o, l int64, d uint32) {
		if k := len(out) - 1; k >= 0 && out[k].Depth == d && out[k].Off+out[k].Len == o {
			out[k].Len += l
			return
		}
		out = append(out, blockdev.DepthExtent{Off: o, Len: l, Depth: d})
	}
	err := img.eachRun(off, n, func(pos int64, r run) (bool, error) {
		if r.kind != kUnalloc {
			add(pos, r.n, 1)
			return len(out) < maxExtents, nil
		}
		stop := pos + r.n
		for pos < stop && img.backing != nil && pos < img.backingSize {
			ds, err := blockdev.Depths(img.backing, pos, min(stop, img.backingSize)-pos)
			if err != nil {
				return false, err
			}
			if len(ds) == 0 {
				return false, fmt.Errorf("qcow2: the backing file reported no depths at %d", pos)
			}
			for _, d := range ds {
				depth := d.Depth
				if depth > 0 {
					depth++
				}
				add(d.Off, d.Len, depth)
				pos = d.Off + d.Len
			}
		}
		if pos < stop {
			add(pos, stop-pos, 0)
		}
		return len(out) < maxExtents, nil
	})
	return out, err
}
