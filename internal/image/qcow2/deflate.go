package qcow2

import (
	"bytes"
	"fmt"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"

	"vdisk/internal/blockdev"
)

// zlibWindow is the deflate window of compressed clusters: qemu inflates
// them as raw deflate with 12 window bits, so no match may reach further
// back than 4 KiB.
const zlibWindow = 4096

// compress returns data compressed with the image's compression type, or
// nil when that would not save at least a sector.
func compress(typ uint8, data []byte, limit int) ([]byte, error) {
	var out []byte
	switch typ {
	case compressZlib:
		var buf bytes.Buffer
		w, err := flate.NewWriterWindow(&buf, zlibWindow)
		if err != nil {
			return nil, err
		}
		if _, err := w.Write(data); err != nil {
			return nil, err
		}
		if err := w.Close(); err != nil {
			return nil, err
		}
		out = buf.Bytes()
	case compressZstd:
		enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(false),
			zstd.WithWindowSize(max(zstd.MinWindowSize, len(data))))
		if err != nil {
			return nil, err
		}
		out = enc.EncodeAll(data, nil)
		enc.Close()
	default:
		return nil, fmt.Errorf("qcow2: compression type %d", typ)
	}
	if len(out) > limit {
		return nil, nil
	}
	return out, nil
}

// WriteCompressed stores the guest cluster at off compressed, as qemu-img
// convert -c does: p is the whole cluster (or the image's shorter last
// cluster) and the cluster must be unallocated, as in an image being
// filled. Compressed clusters are packed byte by byte into shared host
// clusters, each holding a reference per compressed cluster in it. Data
// that does not compress by at least a sector is written as usual.
func (img *Image) WriteCompressed(p []byte, off int64) error {
	if img.readOnly {
		return blockdev.ErrReadOnly
	}
	n := int64(len(p))
	if off < 0 || off+n > img.Size() || off%img.cs != 0 || (n != img.cs && off+n != img.Size()) || n > img.cs {
		return fmt.Errorf("qcow2: compressed write of %d bytes at %d is not one whole cluster: %w", n, off, blockdev.ErrOutOfRange)
	}
	vc := off / img.cs
	img.mu.Lock()
	e, _, err := img.l2Entry(vc)
	img.mu.Unlock()
	if err != nil {
		return err
	}
	if e&(offsetMask|flagCompressed) != 0 {
		return fmt.Errorf("qcow2: compressed write to guest cluster %d, which is allocated already", vc)
	}
	if n < img.cs {
		p = append(append(make([]byte, 0, img.cs), p...), make([]byte, img.cs-n)...)
	}
	comp, err := compress(img.h.compression, p, int(img.cs)-512)
	if err != nil {
		return err
	}
	if comp == nil {
		_, err := img.WriteAt(p[:n], off)
		return err
	}
	if err := img.begin(off, n); err != nil {
		return err
	}
	defer img.ioMu.RUnlock()
	img.mu.Lock()
	img.waitCluster(vc)
	if e, _, err := img.l2Entry(vc); err != nil || e&(offsetMask|flagCompressed) != 0 {
		img.mu.Unlock()
		if err != nil {
			return err
		}
		return fmt.Errorf("qcow2: compressed write to guest cluster %d, which is allocated already", vc)
	}
	defer img.claim(vc, 1)()
	host, err := img.allocBytes(int64(len(comp)))
	if err != nil {
		return err
	}
	img.mu.Unlock()
	err = img.writeHost(comp, host)
	img.mu.Lock()
	if err != nil {
		return err // the bytes stay referenced: a leak check --repair leaks mends
	}
	t, err := img.l2Table(vc/img.l2n, true)
	if err != nil {
		return err
	}
	x := 62 - (img.h.clusterBits - 8)
	sectors := (host+int64(len(comp))-1)>>9 - host>>9
	img.setEntry(t, vc%img.l2n, flagCompressed|uint64(host)|uint64(sectors)<<x, 0)
	img.zc.forget()
	return nil
}

// allocBytes returns n bytes of host space for compressed data, right
// after the previous compressed cluster, as qemu-img packs them: in the
// same host cluster when they fit (its refcount then counts one more
// user), else running on into the next host cluster when that is the one
// the allocator hands out, else at the start of a new one.
func (img *Image) allocBytes(n int64) (int64, error) {
	if img.zNext != 0 && img.zNext%img.cs != 0 {
		cl := img.zNext / img.cs
		rc, err := img.refcount(cl)
		if err != nil {
			return 0, err
		}
		if rc >= 1 && rc < img.maxRefcount() {
			if img.zNext%img.cs+n <= img.cs {
				if err := img.setRefcount(cl, rc+1); err != nil {
					return 0, err
				}
				host := img.zNext
				img.zNext += n
				return host, nil
			}
			next, err := img.alloc(1)
			if err != nil {
				return 0, err
			}
			if next != (cl+1)*img.cs {
				img.zNext = next + n
				return next, nil
			}
			if err := img.setRefcount(cl, rc+1); err != nil {
				return 0, err
			}
			host := img.zNext
			img.zNext += n
			return host, nil
		}
	}
	host, err := img.alloc(1)
	if err != nil {
		return 0, err
	}
	img.zNext = host + n
	return host, nil
}
