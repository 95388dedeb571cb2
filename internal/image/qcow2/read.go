package qcow2

import (
	"errors"
	"fmt"
	"io"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// kind is what a range of guest bytes maps to.
type kind uint8

const (
	kUnalloc    kind = iota // not in this image: the backing file, or zeroes
	kZero                   // reads as zeroes
	kData                   // host bytes at host
	kCompressed             // a compressed cluster (entry holds the descriptor)
)

// run is a range of guest bytes with one kind.
type run struct {
	kind  kind
	host  int64  // kData: host offset of the first byte
	n     int64  // length in bytes
	entry uint64 // kCompressed: the L2 entry; kZero: whether storage stays (offset != 0)
}

// classify describes the bytes of a guest cluster from offset in onward,
// given its L2 entry e and subcluster bitmap bm: the kind, the host offset
// of byte in (kData), and how many bytes share that kind.
func (img *Image) classify(e, bm uint64, in int64) (kind, int64, int64, error) {
	if e&flagCompressed != 0 {
		return kCompressed, 0, img.cs - in, nil
	}
	off := int64(e & offsetMask)
	if img.h.extL2() {
		sc := img.cs / 32
		i := in / sc
		st := func(j int64) kind {
			switch {
			case bm&(1<<j) != 0:
				return kData
			case bm&(1<<(32+j)) != 0:
				return kZero
			}
			return kUnalloc
		}
		k := st(i)
		j := i + 1
		for j < 32 && st(j) == k {
			j++
		}
		if bm&(bm>>32)&0xffffffff != 0 {
			return 0, 0, 0, corruptf("subcluster bitmap %#x marks subclusters both allocated and zero", bm)
		}
		if k == kData {
			if err := img.checkData(off); err != nil {
				return 0, 0, 0, err
			}
		}
		return k, off + in, j*sc - in, nil
	}
	if img.h.version >= 3 && e&flagZero != 0 {
		return kZero, 0, img.cs - in, nil
	}
	if off == 0 {
		return kUnalloc, 0, img.cs - in, nil
	}
	if err := img.checkData(off); err != nil {
		return 0, 0, 0, err
	}
	return kData, off + in, img.cs - in, nil
}

// checkData refuses a data cluster offset that is unaligned or past the end
// of the file.
func (img *Image) checkData(off int64) error {
	if off == 0 || off%img.cs != 0 {
		return corruptf("data cluster offset %#x unaligned or zero", off)
	}
	if off >= img.fileEnd {
		return corruptf("data cluster at %#x past the end of the file (%d bytes)", off, img.fileEnd)
	}
	return nil
}

// mapRun returns the run of guest bytes starting at pos, no longer than
// end-pos, merging clusters while the kind (and, for data, host
// contiguity) stays the same. It runs with mu held.
func (img *Image) mapRun(pos, end int64) (run, error) {
	var r run
	for pos+r.n < end {
		p := pos + r.n
		vc := p / img.cs
		var (
			k    kind
			host int64
			n    int64
			e    uint64
		)
		if i := vc / img.l2n; i < int64(len(img.l1)) && img.l1[i]&offsetMask == 0 {
			// No L2 table: the rest of its span is unallocated.
			k, n = kUnalloc, (i+1)*img.l2n*img.cs-p
		} else {
			var bm uint64
			var err error
			if e, bm, err = img.l2Entry(vc); err != nil {
				return run{}, err
			}
			if k, host, n, err = img.classify(e, bm, p%img.cs); err != nil {
				return run{}, err
			}
		}
		if r.n == 0 {
			r = run{kind: k, host: host, entry: e}
		} else if k != r.kind || k == kCompressed || (k == kData && host != r.host+r.n) ||
			(k == kZero && (e&offsetMask != 0) != (r.entry&offsetMask != 0)) {
			break
		}
		r.n += min(n, end-p)
	}
	return r, nil
}

// ReadAt reads len(p) bytes at guest offset off.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	if err := img.begin(off, int64(len(p))); err != nil {
		return 0, err
	}
	defer img.ioMu.RUnlock()
	end := off + int64(len(p))
	for pos := off; pos < end; {
		img.mu.Lock()
		r, err := img.mapRun(pos, end)
		img.mu.Unlock()
		if err != nil {
			return 0, err
		}
		dst := p[pos-off : pos-off+r.n]
		if err := img.readRun(r, dst, pos); err != nil {
			return 0, err
		}
		pos += r.n
	}
	return len(p), nil
}

// begin checks a transfer's range and takes ioMu shared; the caller
// releases it.
func (img *Image) begin(off, n int64) error {
	img.ioMu.RLock()
	if img.closed.Load() {
		img.ioMu.RUnlock()
		return blockdev.ErrClosed
	}
	if err := blockdev.CheckRange(off, n, img.Size()); err != nil {
		img.ioMu.RUnlock()
		return err
	}
	return nil
}

// readRun fills dst, the guest bytes at pos described by r.
func (img *Image) readRun(r run, dst []byte, pos int64) error {
	switch r.kind {
	case kZero:
		clear(dst)
	case kUnalloc:
		return img.readBacking(dst, pos)
	case kData:
		return img.readHost(dst, r.host)
	case kCompressed:
		buf := make([]byte, img.cs)
		if err := img.readCompressed(r.entry, buf); err != nil {
			return err
		}
		copy(dst, buf[pos%img.cs:])
	}
	return nil
}

// readHost reads host bytes; bytes past the end of the file read as zeroes.
func (img *Image) readHost(dst []byte, off int64) error {
	n, err := img.f.ReadAt(dst, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("qcow2: read data at %#x: %w", off, err)
	}
	clear(dst[n:])
	return nil
}

// readBacking reads guest bytes at pos from the backing file; bytes past
// its end, or without one, read as zeroes.
func (img *Image) readBacking(dst []byte, pos int64) error {
	if err := image.ReadParent(img.backing, dst, pos); err != nil {
		return fmt.Errorf("qcow2: %w", err)
	}
	return nil
}

// readCluster fills buf (one cluster) with the guest content of cluster vc
// as entry e and bitmap bm describe it.
func (img *Image) readCluster(vc int64, e, bm uint64, buf []byte) error {
	for in := int64(0); in < img.cs; {
		img.mu.Lock()
		k, host, n, err := img.classify(e, bm, in)
		img.mu.Unlock()
		if err != nil {
			return err
		}
		if err := img.readRun(run{kind: k, host: host, n: n, entry: e}, buf[in:in+n], vc*img.cs+in); err != nil {
			return err
		}
		in += n
	}
	return nil
}
