package qcow2

import (
	"bytes"
	"compress/flate"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// compressed returns the host offset and length of the compressed data a
// compressed-cluster descriptor points to.
func (img *Image) compressed(e uint64) (int64, int64) {
	x := 62 - (img.h.clusterBits - 8)
	off := int64(e & (1<<x - 1))
	sectors := int64(e>>x) & (1<<(img.h.clusterBits-8) - 1)
	return off, (sectors+1)*512 - off&511
}

var flatePool = sync.Pool{New: func() any { return flate.NewReader(bytes.NewReader(nil)) }}

var zstdPool = sync.Pool{New: func() any {
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxWindow(1<<(maxClusterBits+1)))
	if err != nil {
		panic(err) // options are constant
	}
	return d
}}

// zcacheSlots is how many decompressed clusters an Image keeps, so that
// small sequential reads of a compressed cluster inflate it once.
const zcacheSlots = 4

// zcache holds recently decompressed clusters, keyed by their L2 entry. An
// entry names its compressed bytes for as long as any table references
// it; WriteCompressed, which may reuse freed bytes, forgets them all.
type zcache struct {
	mu   sync.Mutex
	keys [zcacheSlots]uint64
	data [zcacheSlots][]byte
	next int
}

func (z *zcache) get(e uint64, dst []byte) bool {
	z.mu.Lock()
	defer z.mu.Unlock()
	for i, k := range z.keys {
		if k == e && z.data[i] != nil {
			copy(dst, z.data[i])
			return true
		}
	}
	return false
}

// forget drops every cached cluster.
func (z *zcache) forget() {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.keys = [zcacheSlots]uint64{}
	z.data = [zcacheSlots][]byte{}
}

func (z *zcache) put(e uint64, src []byte) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.keys[z.next] = e
	z.data[z.next] = append(z.data[z.next][:0], src...)
	z.next = (z.next + 1) % zcacheSlots
}

// readCompressed decompresses the cluster described by e into dst (one
// cluster).
func (img *Image) readCompressed(e uint64, dst []byte) error {
	if img.zc.get(e, dst) {
		return nil
	}
	if err := img.inflate(e, dst); err != nil {
		return err
	}
	img.zc.put(e, dst)
	return nil
}

// inflate reads and decompresses the cluster described by e.
func (img *Image) inflate(e uint64, dst []byte) error {
	off, n := img.compressed(e)
	img.mu.Lock()
	end := img.fileEnd
	img.mu.Unlock()
	if off >= end {
		return corruptf("compressed cluster at %#x past the end of the file", off)
	}
	n = min(n, end-off)
	src := make([]byte, n)
	if _, err := img.f.ReadAt(src, off); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("qcow2: read compressed cluster at %#x: %w", off, err)
	}
	if err := decompress(img.h.compression, src, dst); err != nil {
		return corruptf("compressed cluster at %#x: %v", off, err)
	}
	return nil
}

// decompress inflates src into exactly len(dst) bytes.
func decompress(typ uint8, src, dst []byte) error {
	switch typ {
	case compressZlib:
		r := flatePool.Get().(io.ReadCloser)
		defer flatePool.Put(r)
		if err := r.(flate.Resetter).Reset(bytes.NewReader(src), nil); err != nil {
			return err
		}
		_, err := io.ReadFull(r, dst)
		return err
	case compressZstd:
		d := zstdPool.Get().(*zstd.Decoder)
		defer func() { d.Reset(nil); zstdPool.Put(d) }()
		if err := d.Reset(bytes.NewReader(src)); err != nil {
			return err
		}
		_, err := io.ReadFull(d, dst)
		return err
	}
	return fmt.Errorf("compression type %d", typ)
}
