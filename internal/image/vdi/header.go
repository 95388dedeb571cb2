package vdi

import (
	"encoding/binary"
	"fmt"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
	"vdisk/internal/image/blockmap"
)

// Layout of the VDI header (version 1.1, little-endian), as VirtualBox
// writes it and qemu's block/vdi.c reads it.
const (
	headerSize   = 0x200 // bytes of the header sector
	headerSize11 = 0x180 // the header_size field of a version 1.1 image
	signature    = 0xbeda107f
	version11    = 0x00010001
	sectorSize   = 512

	// DefaultBlockSize is the block size of every VDI VirtualBox and qemu
	// make (qemu accepts no other).
	DefaultBlockSize = 1 << 20
	// maxBlocks bounds blocks_in_image (qemu's VDI_BLOCKS_IN_IMAGE_MAX).
	maxBlocks = 0x3fffffff
	// blockSlack is how many blocks past what the disk size needs an
	// image may have (4 KiB of block map at most).
	blockSlack = 1024

	blockFree = 0xffffffff // VDI_UNALLOCATED: reads as zeroes
	blockZero = 0xfffffffe // VDI_DISCARDED: reads as zeroes
)

// Image types.
const (
	typeDynamic = 1
	typeStatic  = 2
	typeUndo    = 3
	typeDiff    = 4
)

// Header field offsets.
const (
	offSignature  = 0x40
	offVersion    = 0x44
	offHeaderSize = 0x48
	offType       = 0x4c
	offBmap       = 0x154
	offData       = 0x158
	offSectorSize = 0x168
	offDiskSize   = 0x170
	offBlockSize  = 0x178
	offBlockExtra = 0x17c
	offBlocks     = 0x180
	offAllocated  = 0x184
	offUUIDImage  = 0x188
	offUUIDSnap   = 0x198
	offUUIDLink   = 0x1a8
	offUUIDParent = 0x1b8
)

// header is the decoded VDI header.
type header struct {
	raw       [headerSize]byte
	imageType uint32
	bmapOff   int64
	dataOff   int64
	diskSize  int64
	blockSize int64
	blocks    int64
	allocated int64
}

// corruptf returns an error wrapping blockdev.ErrCorrupt.
func corruptf(format string, a ...any) error {
	return fmt.Errorf("vdi: "+format+": %w", append(a, blockdev.ErrCorrupt)...)
}

// probe matches the VDI signature.
func probe(b []byte) bool {
	return len(b) >= offSignature+4 && binary.LittleEndian.Uint32(b[offSignature:]) == signature
}

// parseHeader decodes and validates the header of a file of fsize bytes.
func parseHeader(b []byte, fsize int64) (*header, error) {
	if len(b) < headerSize || !probe(b) {
		return nil, ErrNotVDI
	}
	le := binary.LittleEndian
	h := &header{
		imageType: le.Uint32(b[offType:]),
		bmapOff:   int64(le.Uint32(b[offBmap:])),
		dataOff:   int64(le.Uint32(b[offData:])),
		diskSize:  int64(le.Uint64(b[offDiskSize:])),
		blockSize: int64(le.Uint32(b[offBlockSize:])),
		blocks:    int64(le.Uint32(b[offBlocks:])),
		allocated: int64(le.Uint32(b[offAllocated:])),
	}
	copy(h.raw[:], b)
	if v := le.Uint32(b[offVersion:]); v != version11 {
		return nil, fmt.Errorf("vdi: version %d.%d (only 1.1 is supported): %w", v>>16, v&0xffff, image.ErrUnsupported)
	}
	if hs := le.Uint32(b[offHeaderSize:]); hs < headerSize11 || hs > headerSize-0x48 {
		return nil, corruptf("header size %#x", hs)
	}
	switch h.imageType {
	case typeDynamic, typeStatic:
	case typeUndo, typeDiff:
		return nil, fmt.Errorf("vdi: image type %d (undo or differencing): %w", h.imageType, image.ErrUnsupported)
	default:
		return nil, corruptf("image type %d", h.imageType)
	}
	if ss := le.Uint32(b[offSectorSize:]); ss != sectorSize {
		return nil, corruptf("sector size %d (want 512)", ss)
	}
	if be := le.Uint32(b[offBlockExtra:]); be != 0 {
		return nil, fmt.Errorf("vdi: block extra data of %d bytes: %w", be, image.ErrUnsupported)
	}
	bs := h.blockSize
	if bs < sectorSize || bs > 64<<20 || bs&(bs-1) != 0 {
		return nil, corruptf("block size %d is not a power of two from 512 to 64 MiB", bs)
	}
	if h.blocks > maxBlocks {
		return nil, corruptf("%d blocks is more than the VDI limit of %d", h.blocks, maxBlocks)
	}
	if h.diskSize < 0 || h.diskSize > h.blocks*bs {
		return nil, corruptf("disk size %d does not fit %d blocks of %d bytes", h.diskSize, h.blocks, bs)
	}
	if need := (h.diskSize + bs - 1) / bs; h.blocks > need+blockSlack {
		return nil, corruptf("%d blocks (blocks in image) is more than the %d that a disk of %d bytes in %d-byte blocks needs", h.blocks, need, h.diskSize, bs)
	}
	if h.bmapOff < headerSize || h.bmapOff%sectorSize != 0 || h.bmapOff+4*h.blocks > fsize {
		return nil, corruptf("block map of %d entries at %#x outside the file of %d bytes", h.blocks, h.bmapOff, fsize)
	}
	if 4*h.blocks > blockmap.MaxTable {
		return nil, fmt.Errorf("vdi: block map of %d blocks (blocks in image) is larger than the %d MiB vdisk reads: %w", h.blocks, blockmap.MaxTable>>20, image.ErrUnsupported)
	}
	if h.dataOff%sectorSize != 0 || h.dataOff < h.bmapOff+4*h.blocks {
		return nil, corruptf("data offset %#x overlaps the block map at %#x", h.dataOff, h.bmapOff)
	}
	if h.allocated > h.blocks {
		return nil, corruptf("%d blocks allocated of %d", h.allocated, h.blocks)
	}
	var zero [16]byte
	if [16]byte(b[offUUIDLink:offUUIDLink+16]) != zero || [16]byte(b[offUUIDParent:offUUIDParent+16]) != zero {
		return nil, fmt.Errorf("vdi: image linked to a parent: %w", image.ErrUnsupported)
	}
	return h, nil
}

// encode writes the fields Create and Flush change into raw.
func (h *header) encode() []byte {
	le := binary.LittleEndian
	b := h.raw[:]
	le.PutUint32(b[offSignature:], signature)
	le.PutUint32(b[offVersion:], version11)
	le.PutUint32(b[offHeaderSize:], headerSize11)
	le.PutUint32(b[offType:], h.imageType)
	le.PutUint32(b[offBmap:], uint32(h.bmapOff))
	le.PutUint32(b[offData:], uint32(h.dataOff))
	le.PutUint32(b[offSectorSize:], sectorSize)
	le.PutUint64(b[offDiskSize:], uint64(h.diskSize))
	le.PutUint32(b[offBlockSize:], uint32(h.blockSize))
	le.PutUint32(b[offBlocks:], uint32(h.blocks))
	le.PutUint32(b[offAllocated:], uint32(h.allocated))
	return b
}
