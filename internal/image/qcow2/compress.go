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

// readCompressed decompresses the cluster described by e into dst (one
// cluster).
func (img *Image) readCompressed(e uint64, dst []byte) error {
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
