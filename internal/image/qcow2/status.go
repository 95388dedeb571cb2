package qcow2

import (
	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

var _ image.Layer = (*Image)(nil)

// LayerStatus describes the run of this image alone at off (qemu's
// qcow2 block status): data clusters with their host offset, compressed
// clusters without one, zero clusters (with the offset of the storage
// they keep, if any), and unallocated runs, which read as zeroes only
// without a backing file.
func (img *Image) LayerStatus(off, n int64) (image.Status, error) {
	if err := img.begin(off, n); err != nil {
		return image.Status{}, err
	}
	defer img.ioMu.RUnlock()
	img.mu.Lock()
	r, err := img.mapRun(off, off+n)
	if err == nil && r.kind == kZero && r.entry&offsetMask != 0 {
		// A zero run that keeps its storage: one cluster at a time, so
		// the offset is right for all of it.
		r, err = img.mapRun(off, min(off+n, (off/img.cs+1)*img.cs))
	}
	img.mu.Unlock()
	if err != nil {
		return image.Status{}, err
	}
	st := image.Status{Len: r.n}
	switch r.kind {
	case kData:
		st.Allocated, st.Data, st.File, st.Offset = true, true, img.f, r.host
	case kCompressed:
		st.Allocated, st.Data, st.Compressed = true, true, true
	case kZero:
		st.Allocated, st.Zero = true, true
		if host := zeroHost(img, r, off); host != 0 {
			st.File, st.Offset = img.f, host
		}
	case kUnalloc:
		st.Zero = img.backing == nil
	}
	return st, nil
}

// zeroHost is the host offset of the guest byte off in the zero run r
// that keeps its storage, 0 when it keeps none.
func zeroHost(img *Image, r run, off int64) int64 {
	if h := int64(r.entry & offsetMask); h != 0 {
		return h + off%img.cs
	}
	return 0
}

// BackingDevice returns the opened backing image, nil without one.
func (img *Image) BackingDevice() blockdev.Device { return img.backing }
