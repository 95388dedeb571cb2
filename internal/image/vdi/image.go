// Package vdi reads and writes VirtualBox VDI images (version 1.1, dynamic
// and static) as blockdev Devices. It registers itself with the image
// registry as "vdi".
//
// An Image serves reads and writes from many goroutines at once. One mutex
// (mu) guards the block map and the allocator; data is read and written
// outside it. A new block gets space at the end of the file (extended
// sparse, so it reads as zeroes until written); Flush syncs the data, then
// writes the block map entries and the header's count of allocated blocks,
// then syncs again. A crash before a Flush loses unflushed writes and leaves
// at most unreferenced space at the end of the file, which the next
// allocation reuses.
package vdi

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"os"
	"sync"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// Name is the format's name in the image registry.
const Name = "vdi"

func init() {
	image.Register(image.Format{
		Name:   Name,
		Probe:  probe,
		Open:   func(path string, opt image.OpenOptions) (blockdev.Device, error) { return Open(path, opt) },
		Create: Create,
		Info:   Info,
		Check:  Check,
	})
}

// Image is an open VDI image. See the package comment for its concurrency
// contract.
type Image struct {
	f        *os.File
	path     string
	h        *header
	size     int64
	bs       int64
	readOnly bool
	log      *slog.Logger

	mu       sync.Mutex
	closed   bool
	bmap     []uint32
	dirty    map[int64]bool // block map sectors to write
	next     int64          // index of the next block to allocate
	fileSize int64
	hdrDirty bool // the allocated-block count changed
}

var (
	_ blockdev.Device     = (*Image)(nil)
	_ blockdev.Trimmer    = (*Image)(nil)
	_ blockdev.ZeroWriter = (*Image)(nil)
	_ blockdev.Extenter   = (*Image)(nil)
	_ blockdev.Describer  = (*Image)(nil)
)

// Open opens the VDI at path.
func Open(path string, opt image.OpenOptions) (*Image, error) {
	if err := opt.Validate(); err != nil {
		return nil, err
	}
	f, err := image.OpenPath("vdi", path, opt)
	if err != nil {
		return nil, err
	}
	img, err := load(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%w (in %s)", err, path)
	}
	img.path, img.readOnly, img.log = path, opt.ReadOnly, opt.Log
	return img, nil
}

// load reads and validates the header and the block map.
func load(f *os.File) (*Image, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("vdi: %w", err)
	}
	fsize := st.Size()
	b := make([]byte, headerSize)
	if fsize < headerSize {
		return nil, fmt.Errorf("vdi: file of %d bytes is too short for a header: %w", fsize, ErrNotVDI)
	}
	if _, err := f.ReadAt(b, 0); err != nil {
		return nil, fmt.Errorf("vdi: read header: %w", err)
	}
	h, err := parseHeader(b, fsize)
	if err != nil {
		return nil, err
	}
	raw := make([]byte, 4*h.blocks)
	if _, err := f.ReadAt(raw, h.bmapOff); err != nil {
		return nil, fmt.Errorf("vdi: read block map: %w", err)
	}
	img := &Image{f: f, h: h, size: h.diskSize, bs: h.blockSize, bmap: make([]uint32, h.blocks), dirty: map[int64]bool{}, fileSize: fsize}
	used := make(map[uint32]int, h.allocated)
	img.next = h.allocated
	for i := range img.bmap {
		e := binary.LittleEndian.Uint32(raw[4*i:])
		img.bmap[i] = e
		if e == blockFree || e == blockZero {
			continue
		}
		if int64(e) >= h.blocks {
			return nil, corruptf("block map entry %d (%d) is beyond the %d blocks of the image", i, e, h.blocks)
		}
		if end := h.dataOff + (int64(e)+1)*h.blockSize; end > fsize {
			return nil, corruptf("block map entry %d (%d) ends at %d, past the end of the file of %d bytes: truncated", i, e, end, fsize)
		}
		if j, ok := used[e]; ok {
			return nil, corruptf("block map entries %d and %d share block %d", j, i, e)
		}
		used[e] = i
		img.next = max(img.next, int64(e)+1)
	}
	return img, nil
}

// Size returns the virtual disk size.
func (img *Image) Size() int64 { return img.size }

// BlockSize returns the size of the image's blocks.
func (img *Image) BlockSize() int64 { return img.bs }

// Info reports block sizes and whether the image is read-only.
func (img *Image) Info() blockdev.Info {
	return blockdev.Info{LogicalBlockSize: sectorSize, PhysicalBlockSize: 4096, ReadOnly: img.readOnly}
}

// Close flushes every change and releases the file.
func (img *Image) Close() error {
	img.mu.Lock()
	if img.closed {
		img.mu.Unlock()
		return blockdev.ErrClosed
	}
	img.mu.Unlock()
	var err error
	if !img.readOnly {
		err = img.Flush()
	}
	img.mu.Lock()
	img.closed = true
	img.mu.Unlock()
	if cerr := img.f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("vdi: close: %w", cerr)
	}
	return err
}
