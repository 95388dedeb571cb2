package vdi

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"

	"vdisk/internal/image"
)

// headerText is the text at the start of the images vdisk makes.
const headerText = "<<< vdisk VDI Disk Image >>>\n"

// Create writes a new VDI into f, an empty file, and syncs it. opt.Options may set
// static (on: every block allocated up front, in order; off, the default:
// dynamic); subformat=static|dynamic says the same. The block size is
// 1 MiB, the only one qemu reads; VDI has no backing files.
func Create(f image.File, opt image.CreateOptions) error {
	if err := opt.Validate(); err != nil {
		return err
	}
	if opt.BackingFile != "" {
		return fmt.Errorf("vdi: differencing images are not supported: %w", image.ErrUnsupported)
	}
	if opt.ClusterSize != 0 && opt.ClusterSize != DefaultBlockSize {
		return fmt.Errorf("vdi: block size %d: only 1 MiB is supported", opt.ClusterSize)
	}
	static := false
	for k, v := range opt.Options {
		switch {
		case k == "static" && (v == "on" || v == "true"), k == "subformat" && v == "static":
			static = true
		case k == "static" && (v == "off" || v == "false"), k == "subformat" && v == "dynamic":
		default:
			return fmt.Errorf("vdi: option %s=%q: want static=on|off or subformat=static|dynamic", k, v)
		}
	}
	bs := int64(DefaultBlockSize)
	size := (opt.Size + sectorSize - 1) &^ (sectorSize - 1)
	blocks := (size + bs - 1) / bs
	if blocks > maxBlocks {
		return fmt.Errorf("vdi: size %d is larger than the VDI limit of %d blocks", opt.Size, maxBlocks)
	}
	h := &header{imageType: typeDynamic, bmapOff: headerSize, diskSize: size, blockSize: bs, blocks: blocks}
	h.dataOff = h.bmapOff + (4*blocks+sectorSize-1)&^(sectorSize-1)
	copy(h.raw[:], headerText)
	if _, err := rand.Read(h.raw[offUUIDImage : offUUIDImage+32]); err != nil {
		return fmt.Errorf("vdi: %w", err)
	}
	for _, o := range []int{offUUIDImage, offUUIDSnap} {
		h.raw[o+7] = h.raw[o+7]&0x0f | 0x40 // version 4, stored little-endian
		h.raw[o+8] = h.raw[o+8]&0x3f | 0x80
	}
	fileSize := h.dataOff
	if static {
		h.imageType = typeStatic
		h.allocated = blocks
		fileSize += blocks * bs
	}
	buf := make([]byte, h.dataOff)
	copy(buf, h.encode())
	for i := range blocks {
		e := uint32(blockFree)
		if static {
			e = uint32(i)
		}
		binary.LittleEndian.PutUint32(buf[h.bmapOff+4*i:], e)
	}
	_, err := f.WriteAt(buf, 0)
	if err == nil {
		err = f.Truncate(fileSize)
	}
	if err == nil {
		err = f.Sync()
	}
	if err != nil {
		return fmt.Errorf("vdi: create %s: %w", f.Name(), err)
	}
	return nil
}
