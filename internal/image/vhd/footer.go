package vhd

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"vdisk/internal/blockdev"
)

// Sizes and limits of the format (Microsoft's Virtual Hard Disk Image Format
// Specification, and qemu's block/vpc.c for the limits it enforces).
const (
	footerSize    = 512
	dynHeaderSize = 1024
	sectorSize    = 512

	// batSlack is how many BAT entries past what the virtual size needs
	// an image may have (writers round the table up; 16 KiB at most).
	batSlack = 4096
	// fixedBlock is the piece a fixed disk is served in.
	fixedBlock = 16 << 20

	// maxSectors is the largest virtual size qemu accepts: 2040 GiB.
	maxSectors = 0xff000000
	// maxGeometry is the largest CHS geometry, 65535 x 16 x 255 sectors;
	// an image with it takes its size from the footer.
	maxGeometry = 65535 * 16 * 255
	// maxBlockSize bounds a dynamic disk's block size; the specification's
	// default is 2 MiB, Hyper-V writes up to 256 MiB.
	maxBlockSize = 256 << 20
	// DefaultBlockSize is the block size Create uses.
	DefaultBlockSize = 2 << 20

	batUnused = 0xffffffff
	noOffset  = 0xffffffffffffffff
)

// Disk types (footer field "Disk Type").
const (
	typeFixed        = 2
	typeDynamic      = 3
	typeDifferencing = 4
)

var (
	footerCookie = []byte("conectix")
	dynCookie    = []byte("cxsparse")
)

// footer is the hard disk footer, 512 bytes at the end of every VHD (and
// copied to offset 0 of dynamic and differencing ones).
type footer struct {
	raw         [footerSize]byte
	dataOffset  uint64
	creatorApp  string
	currentSize uint64
	cyls        uint16
	heads       uint8
	spt         uint8
	diskType    uint32
	uuid        [16]byte
	timestamp   uint32
}

// checksum is the one's complement of the sum of all bytes of b except the
// four at skip (the checksum field itself).
func checksum(b []byte, skip int) uint32 {
	var s uint32
	for i, c := range b {
		if i >= skip && i < skip+4 {
			continue
		}
		s += uint32(c)
	}
	return ^s
}

// corruptf returns an error wrapping blockdev.ErrCorrupt.
func corruptf(format string, a ...any) error {
	return fmt.Errorf("vhd: "+format+": %w", append(a, blockdev.ErrCorrupt)...)
}

// parseFooter decodes and verifies a footer.
func parseFooter(b []byte) (*footer, error) {
	if len(b) < footerSize || !bytes.Equal(b[:8], footerCookie) {
		return nil, ErrNotVHD
	}
	ft := &footer{}
	copy(ft.raw[:], b)
	be := binary.BigEndian
	if got, want := be.Uint32(b[64:]), checksum(b[:footerSize], 64); got != want {
		return nil, corruptf("footer checksum %#08x, computed %#08x", got, want)
	}
	ft.dataOffset = be.Uint64(b[16:])
	ft.timestamp = be.Uint32(b[24:])
	ft.creatorApp = string(b[28:32])
	ft.currentSize = be.Uint64(b[48:])
	ft.cyls = be.Uint16(b[56:])
	ft.heads = b[58]
	ft.spt = b[59]
	ft.diskType = be.Uint32(b[60:])
	copy(ft.uuid[:], b[68:84])
	switch ft.diskType {
	case typeFixed, typeDynamic, typeDifferencing:
	default:
		return nil, corruptf("disk type %d is not fixed (2), dynamic (3) or differencing (4)", ft.diskType)
	}
	return ft, nil
}

// virtualSize returns the disk size qemu gives the image: the CHS geometry
// for images written by Virtual PC and qemu without force_size, the
// footer's current size for Hyper-V, disk2vhd, XenServer and qemu with
// force_size (creator "qem2"), and for any image with the maximum geometry.
func (ft *footer) virtualSize() (int64, error) {
	chs := int64(ft.cyls) * int64(ft.heads) * int64(ft.spt)
	sectors := chs
	switch ft.creatorApp {
	case "win ", "qem2", "d2v ", "CTXS", "tap\x00":
		sectors = int64(ft.currentSize / sectorSize)
	default:
		if chs == maxGeometry {
			sectors = int64(ft.currentSize / sectorSize)
		}
	}
	if sectors > maxSectors || sectors < 0 {
		return 0, corruptf("disk size of %d sectors is larger than the 2040 GiB VHD limit", uint64(sectors))
	}
	return sectors * sectorSize, nil
}

// geometry returns the CHS geometry of a disk of sectors sectors, as the
// VHD specification (appendix "CHS Calculation") computes it.
func geometry(sectors int64) (cyls uint16, heads, spt uint8) {
	sectors = min(sectors, maxGeometry)
	var cth int64
	if sectors >= 65535*16*63 {
		spt, heads = 255, 16
		cth = sectors / 255
	} else {
		spt = 17
		cth = sectors / 17
		h := (cth + 1023) / 1024
		if h < 4 {
			h = 4
		}
		if cth >= h*1024 || h > 16 {
			spt, h = 31, 16
			cth = sectors / 31
		}
		if cth >= h*1024 {
			spt, h = 63, 16
			cth = sectors / 63
		}
		heads = uint8(h)
	}
	return uint16(cth / int64(heads)), heads, spt
}

// encode fills raw from the fields and recomputes the checksum.
func (ft *footer) encode() []byte {
	b := ft.raw[:]
	be := binary.BigEndian
	copy(b[:8], footerCookie)
	be.PutUint64(b[16:], ft.dataOffset)
	be.PutUint32(b[24:], ft.timestamp)
	copy(b[28:32], ft.creatorApp)
	be.PutUint64(b[48:], ft.currentSize)
	be.PutUint16(b[56:], ft.cyls)
	b[58], b[59] = ft.heads, ft.spt
	be.PutUint32(b[60:], ft.diskType)
	copy(b[68:84], ft.uuid[:])
	be.PutUint32(b[64:], checksum(b, 64))
	return b
}
