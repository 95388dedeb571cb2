// Package vdi reads and writes VirtualBox VDI images (version 1.1, dynamic
// and static) as blockdev Devices over an image.File. It registers itself
// with the image registry as "vdi".
//
// An Image is the blockmap core over the block map: entries are indices
// of blocks in the data area (or "free" and "zero", which read as
// zeroes). A new block takes the next index at the end of the file; the
// core writes the header's count of allocated blocks and then the block
// map entries at Flush, after the data is durable.
package vdi

import (
	"encoding/binary"
	"fmt"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
	"vdisk/internal/image/blockmap"
)

// Name is the format's name in the image registry.
const Name = "vdi"

func init() {
	image.Register(image.Format{
		Name:       Name,
		Probe:      probe,
		OpenFile:   func(f image.File, opt image.OpenOptions) (blockdev.Device, error) { return Open(f, opt) },
		CreateFile: Create,
		InfoFile:   Info,
		CheckFile:  Check,
	})
}

// Image is an open VDI image.
type Image struct {
	*blockmap.Map
	h *header
}

// Open opens the VDI in f.
func Open(f image.File, opt image.OpenOptions) (*Image, error) {
	if err := opt.Validate(); err != nil {
		return nil, err
	}
	img, err := load(f, opt.ReadOnly)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, f.Name())
	}
	return img, nil
}

// load reads and checks the header, then the block map (bounded by the
// header's checks against the disk size and the file size), and serves
// the image on the blockmap core, which checks every entry.
func load(f image.File, readOnly bool) (*Image, error) {
	fsize, err := f.Size()
	if err != nil {
		return nil, fmt.Errorf("vdi: %w", err)
	}
	if fsize < headerSize {
		return nil, fmt.Errorf("vdi: file of %d bytes is too short for a header: %w", fsize, ErrNotVDI)
	}
	b := make([]byte, headerSize)
	if _, err := f.ReadAt(b, 0); err != nil {
		return nil, fmt.Errorf("vdi: read header: %w", err)
	}
	h, err := parseHeader(b, fsize)
	if err != nil {
		return nil, err
	}
	bmap := make([]byte, 4*h.blocks)
	if _, err := f.ReadAt(bmap, h.bmapOff); err != nil {
		return nil, fmt.Errorf("vdi: read block map: %w", err)
	}
	for i := range h.blocks {
		if e := binary.LittleEndian.Uint32(bmap[4*i:]); e < blockZero && int64(e) >= h.blocks {
			return nil, corruptf("block map entry %d (%d) is beyond the %d blocks of the image", i, e, h.blocks)
		}
	}
	m, err := blockmap.New(blockmap.Config{
		Name: "vdi", File: f, Size: h.diskSize, BlockSize: h.blockSize, Blocks: h.blocks,
		Table: bmap, TableOff: h.bmapOff, TableName: "block map", Codec: &codec{f: f, h: h},
		Reserved: []blockmap.Span{{Start: 0, End: h.dataOff}},
		End:      h.dataOff + h.allocated*h.blockSize,
		ReadOnly: readOnly,
		// qemu's vdi reports free and zero blocks as zeroes of its own,
		// and a static image's blocks over holes of the file as zeroes.
		Status: blockmap.StatusRules{OwnZero: true, Recurse: h.imageType == typeStatic},
	})
	if err != nil {
		return nil, err
	}
	return &Image{Map: m, h: h}, nil
}

// codec maps the block map: little-endian indices of blocks in the data
// area.
type codec struct {
	f image.File
	h *header
}

func (c *codec) Get(t []byte, blk int64) blockmap.Entry {
	switch e := binary.LittleEndian.Uint32(t[4*blk:]); e {
	case blockFree:
		return blockmap.Entry{}
	case blockZero:
		return blockmap.Entry{State: blockmap.Zero}
	default:
		return blockmap.Entry{State: blockmap.Data, Off: c.h.dataOff + int64(e)*c.h.blockSize}
	}
}

func (c *codec) Put(t []byte, blk int64, e blockmap.Entry) int64 {
	binary.LittleEndian.PutUint32(t[4*blk:], uint32((e.Off-c.h.dataOff)/c.h.blockSize))
	return 4 * blk
}

// Place gives the block the next index, at end.
func (c *codec) Place(blk, end int64) (blockmap.Placement, error) {
	if next := (end - c.h.dataOff) / c.h.blockSize; next >= c.h.blocks {
		return blockmap.Placement{}, corruptf("no free block left for block %d: %d of %d in use", blk, next, c.h.blocks)
	}
	return blockmap.Placement{Entry: blockmap.Entry{State: blockmap.Data, Off: end}, End: end + c.h.blockSize}, nil
}

// Commit writes the header's count of allocated blocks.
func (c *codec) Commit(end int64) error {
	c.h.allocated = (end - c.h.dataOff) / c.h.blockSize
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], uint32(c.h.allocated))
	if _, err := c.f.WriteAt(b[:], offAllocated); err != nil {
		return fmt.Errorf("vdi: write header: %w", err)
	}
	return nil
}
