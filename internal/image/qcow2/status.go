package qcow2

import (
	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

var _ image.Layer = (*Image)(nil)

// subType is what one subcluster (a whole cluster without extended L2
// entries) of the image is, in qemu's terms (QCow2SubclusterType).
type subType uint8

const (
	scUnallocPlain subType = iota // no host cluster: the backing file, or zeroes
	scUnallocAlloc                // a host cluster, this subcluster not in it: the backing file
	scZeroPlain                   // reads as zeroes, no host cluster
	scZeroAlloc                   // reads as zeroes, the host cluster kept
	scNormal                      // data in the host cluster
	scCompressed                  // a compressed cluster
)

// hasHost reports whether t has a host offset (qemu's OFFSET_VALID).
func (t subType) hasHost() bool { return t == scNormal || t == scZeroAlloc || t == scUnallocAlloc }

// subclusterType is the type of subcluster sc of a cluster with L2 entry
// e and subcluster bitmap bm, as qemu's qcow2_get_subcluster_type says
// (the zero flag only in version 3 images, as the read path has it).
func (img *Image) subclusterType(e, bm uint64, sc int64) (subType, error) {
	if e&flagCompressed != 0 {
		return scCompressed, nil
	}
	host := int64(e & offsetMask)
	if !img.h.extL2() {
		switch {
		case img.h.version >= 3 && e&flagZero != 0 && host != 0:
			return scZeroAlloc, img.checkHost(host)
		case img.h.version >= 3 && e&flagZero != 0:
			return scZeroPlain, nil
		case host == 0:
			return scUnallocPlain, nil
		}
		return scNormal, img.checkData(host)
	}
	alloc, zero := bm&(1<<sc) != 0, bm&(1<<(32+sc)) != 0
	if host == 0 {
		switch {
		case bm&0xffffffff != 0:
			return 0, corruptf("subcluster bitmap %#x marks subclusters allocated in an unallocated cluster", bm)
		case zero:
			return scZeroPlain, nil
		}
		return scUnallocPlain, nil
	}
	switch {
	case bm&(bm>>32)&0xffffffff != 0:
		return 0, corruptf("subcluster bitmap %#x marks subclusters both allocated and zero", bm)
	case zero:
		return scZeroAlloc, img.checkHost(host)
	case alloc:
		return scNormal, img.checkData(host)
	}
	return scUnallocAlloc, img.checkHost(host)
}

// checkHost refuses a host cluster offset that is not cluster aligned.
func (img *Image) checkHost(off int64) error {
	if off%img.cs != 0 {
		return corruptf("cluster offset %#x unaligned", off)
	}
	return nil
}

// statusRun is the run of subclusters of one type from guest byte pos,
// no longer than end-pos, as qemu's qcow2_get_host_offset counts them:
// a compressed cluster alone, and for types with a host offset only
// while the host clusters follow each other. host is the host offset of
// byte pos (types with one). It runs with mu held.
func (img *Image) statusRun(pos, end int64) (t subType, host, n int64, err error) {
	sub := img.cs
	if img.h.extL2() {
		sub = img.cs / 32
	}
	for p := pos; p < end; {
		vc, in := p/img.cs, p%img.cs
		if i := vc / img.l2n; i < int64(len(img.l1)) && img.l1[i]&offsetMask == 0 {
			// No L2 table: the rest of its span is unallocated.
			if p > pos && t != scUnallocPlain {
				break
			}
			t, n = scUnallocPlain, min((i+1)*img.l2n*img.cs, end)-pos
			p = pos + n
			continue
		}
		e, bm, err := img.l2Entry(vc)
		if err != nil {
			return 0, 0, 0, err
		}
		for in < img.cs && p < end {
			k, err := img.subclusterType(e, bm, in/sub)
			if err != nil {
				if p > pos {
					return t, host, n, nil // the run so far; the next call fails
				}
				return 0, 0, 0, err
			}
			h := int64(e&offsetMask) + in
			switch {
			case p == pos:
				t, host = k, h
			case k != t || t == scCompressed || t.hasHost() && h != host+n:
				return t, host, n, nil
			}
			step := min(sub-in%sub, end-p)
			if k == scCompressed {
				step = min(img.cs-in, end-p)
			}
			in, p, n = in+step, p+step, n+step
			if k == scCompressed {
				return t, host, n, nil
			}
		}
	}
	return t, host, n, nil
}

// LayerStatus describes the run of this image alone at off as qemu's
// qcow2 block status does: data (sub)clusters with their host offset,
// compressed clusters without one, zero (sub)clusters (with the offset of
// the host cluster they keep, if any) and unallocated ones (with the
// offset of their host cluster, if any), which read as zeroes only
// without a backing file. Data runs ask for the file's holes (Recurse)
// when the image looks preallocated with metadata, as qemu decides it.
func (img *Image) LayerStatus(off, n int64) (image.Status, error) {
	if err := img.begin(off, n); err != nil {
		return image.Status{}, err
	}
	defer img.ioMu.RUnlock()
	img.mu.Lock()
	t, host, l, err := img.statusRun(off, off+n)
	prealloc := false
	if err == nil && t == scNormal {
		prealloc = img.metadataPreallocated()
	}
	img.mu.Unlock()
	if err != nil {
		return image.Status{}, err
	}
	st := image.Status{Len: l}
	if t.hasHost() {
		st.File, st.Offset = img.f, host
	}
	switch t {
	case scNormal:
		st.Allocated, st.Data, st.Recurse = true, true, prealloc
	case scCompressed:
		st.Allocated, st.Data, st.Compressed = true, true, true
	case scZeroPlain, scZeroAlloc:
		st.Allocated, st.Zero = true, true
	default:
		st.Zero = img.backing == nil
	}
	return st, nil
}

// metadataPreallocated reports, once for the image, whether it looks
// preallocated with metadata only (qemu's
// qcow2_detect_metadata_preallocation): more clusters in use by the
// refcounts than the file has storage for, by a ninth (and at least two
// clusters). The data clusters of such an image may be holes of the
// file, which read as zeroes. Errors count as no. It runs with mu held.
func (img *Image) metadataPreallocated() bool {
	if img.preallocKnown {
		return img.prealloc
	}
	img.preallocKnown = true
	size, err := img.f.Size()
	if err != nil {
		return false
	}
	real := image.DiskSize(img.f) / img.cs
	threshold := max(real*10/9, real+2)
	used := int64(0)
	for c, end := int64(0), (size+img.cs-1)/img.cs; c < end && used <= threshold; c++ {
		rc, err := img.refcount(c)
		if err != nil {
			return false
		}
		if rc != 0 {
			used++
		}
	}
	img.prealloc = used > threshold
	return img.prealloc
}

// BackingDevice returns the opened backing image, nil without one.
func (img *Image) BackingDevice() blockdev.Device { return img.backing }
