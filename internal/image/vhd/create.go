package vhd

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"vdisk/internal/image"
)

// creatorApp is the creator application vdisk records. Readers that do not
// know it take the size from the CHS geometry, which Create makes agree
// with the footer's size.
const creatorApp = "vdsk"

// vhdEpoch is the start of VHD timestamps: 2000-01-01 00:00:00 UTC.
var vhdEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

func timestamp(t time.Time) uint32 { return uint32(t.Sub(vhdEpoch) / time.Second) }

// Create writes a new VHD into f, an empty file, and syncs it. opt.Options may set
// subformat (dynamic, the default, or fixed) and force_size (on: the size
// is kept exactly and the geometry set to its maximum, as qemu's
// force_size does; off: the size is rounded up to a whole CHS geometry).
// opt.ClusterSize sets a dynamic disk's block size (default 2 MiB). With
// opt.BackingFile, a differencing disk of the parent's size is made; its
// parent must be a VHD, opened through opt.Names to read its size and
// identity; its name is recorded as given.
func Create(f image.File, opt image.CreateOptions) error {
	if err := opt.Validate(); err != nil {
		return err
	}
	fixed, force := false, false
	for k, v := range opt.Options {
		switch k {
		case "subformat":
			switch v {
			case "fixed":
				fixed = true
			case "dynamic":
			default:
				return fmt.Errorf("vhd: subformat %q: want dynamic or fixed", v)
			}
		case "force_size":
			switch v {
			case "on", "true":
				force = true
			case "off", "false":
			default:
				return fmt.Errorf("vhd: force_size %q: want on or off", v)
			}
		default:
			return fmt.Errorf("vhd: unknown option %q (known: subformat, force_size)", k)
		}
	}
	bs := opt.ClusterSize
	if bs == 0 {
		bs = DefaultBlockSize
	}
	if bs < sectorSize || bs > maxBlockSize || bs&(bs-1) != 0 {
		return fmt.Errorf("vhd: block size %d: want a power of two from 512 to %d", bs, maxBlockSize)
	}
	if fixed && (opt.BackingFile != "" || opt.ClusterSize != 0) {
		return fmt.Errorf("vhd: a fixed disk has no parent and no block size: %w", image.ErrUnsupported)
	}
	ft := &footer{dataOffset: noOffset, timestamp: timestamp(time.Now()), creatorApp: creatorApp, diskType: typeDynamic}
	if _, err := rand.Read(ft.uuid[:]); err != nil {
		return fmt.Errorf("vhd: %w", err)
	}
	ft.uuid[6] = ft.uuid[6]&0x0f | 0x40
	ft.uuid[8] = ft.uuid[8]&0x3f | 0x80
	dh := &dynHeader{blockSize: uint32(bs), tableOffset: 3 * sectorSize}
	var locData [][]byte
	if opt.BackingFile != "" {
		if err := parentFields(f, opt, ft, dh, &locData); err != nil {
			return err
		}
	} else if err := sizeFields(ft, opt.Size, force); err != nil {
		return err
	}
	if fixed {
		ft.diskType = typeFixed
		return writeNew(f, ft.encode(), int64(ft.currentSize))
	}
	ft.dataOffset = sectorSize
	entries := (int64(ft.currentSize) + bs - 1) / bs
	dh.maxEntries = uint32(entries)
	batBytes := (entries*4 + sectorSize - 1) &^ (sectorSize - 1)
	end := 3*sectorSize + batBytes
	for i, d := range locData {
		dh.locators[i].offset = uint64(end)
		end += (int64(len(d)) + sectorSize - 1) &^ (sectorSize - 1)
	}
	buf := make([]byte, end+footerSize)
	copy(buf, ft.encode())
	copy(buf[sectorSize:], dh.encode())
	for i := 3 * sectorSize; i < 3*sectorSize+int(entries)*4; i++ {
		buf[i] = 0xff
	}
	for i, d := range locData {
		copy(buf[dh.locators[i].offset:], d)
	}
	copy(buf[end:], ft.raw[:])
	return writeNew(f, buf, 0)
}

// sizeFields sets the footer's size and geometry for a disk of size bytes,
// as qemu does: rounded up to a whole geometry, or kept exactly with the
// maximum geometry (force, or sizes beyond what a geometry can express).
func sizeFields(ft *footer, size int64, force bool) error {
	sectors := (size + sectorSize - 1) / sectorSize
	var c uint16
	var h, s uint8
	if force {
		c, h, s = 65535, 16, 255
	} else {
		want := min(int64(maxGeometry), sectors)
		for i := int64(0); want > int64(c)*int64(h)*int64(s); i++ {
			c, h, s = geometry(want + i)
		}
	}
	if chs := int64(c) * int64(h) * int64(s); chs != maxGeometry {
		sectors = chs
	}
	if sectors > maxSectors {
		return fmt.Errorf("vhd: size %d is larger than the 2040 GiB VHD limit", size)
	}
	ft.cyls, ft.heads, ft.spt = c, h, s
	ft.currentSize = uint64(sectors * sectorSize)
	binary.BigEndian.PutUint64(ft.raw[40:], ft.currentSize) // original size
	return nil
}

// parentFields fills a differencing disk's footer and header from its
// parent, and returns the parent locator's data: the name as given, as a
// relative or an absolute Windows path.
func parentFields(f image.File, opt image.CreateOptions, ft *footer, dh *dynHeader, locData *[][]byte) error {
	if opt.BackingFormat != "" && opt.BackingFormat != Name {
		return fmt.Errorf("vhd: parent format %q: a differencing disk's parent must be a VHD: %w", opt.BackingFormat, image.ErrUnsupported)
	}
	name := opt.BackingFile
	if utf16Len(name) > 512 {
		return fmt.Errorf("vhd: parent name %q is longer than 256 UTF-16 characters", name)
	}
	names := opt.Names
	if names == nil {
		names = image.LocalNames{}
	}
	pf, err := names.Open(f, name, true)
	if err != nil {
		return fmt.Errorf("vhd: parent: %w", err)
	}
	defer pf.Close()
	md, err := load(pf)
	if err != nil {
		return fmt.Errorf("vhd: parent %s: %w", pf.Name(), err)
	}
	pft, psize := md.ft, md.size
	if opt.Size != 0 && opt.Size != psize {
		return fmt.Errorf("vhd: a differencing disk has its parent's size %d, not %d: %w", psize, opt.Size, image.ErrUnsupported)
	}
	ft.diskType = typeDifferencing
	ft.cyls, ft.heads, ft.spt, ft.currentSize = pft.cyls, pft.heads, pft.spt, pft.currentSize
	copy(ft.raw[40:48], pft.raw[40:48])
	if chs := int64(pft.cyls) * int64(pft.heads) * int64(pft.spt) * sectorSize; chs != psize {
		ft.creatorApp = pft.creatorApp // keep the parent's size semantics
	}
	dh.parentUUID = pft.uuid
	if o, ok := pf.(interface{ OS() *os.File }); ok {
		if st, err := o.OS().Stat(); err == nil {
			dh.parentTimestamp = timestamp(st.ModTime())
		}
	}
	dh.parentName = name
	code, p := uint32(platformW2ru), toWindows(name)
	if filepath.IsAbs(name) {
		code, p = platformW2ku, name
	}
	d := encodeUTF16(p, binary.LittleEndian)
	dh.locators[0] = locator{platform: code, space: uint32((len(d) + sectorSize - 1) / sectorSize), length: uint32(len(d))}
	*locData = append(*locData, d)
	return nil
}

// toWindows writes a relative slash path the way Windows tools do: ".\a\b".
func toWindows(p string) string {
	out := []byte(`.\`)
	for i := 0; i < len(p); i++ {
		if p[i] == '/' {
			out = append(out, '\\')
		} else {
			out = append(out, p[i])
		}
	}
	return string(out)
}

// writeNew writes buf into the new file f, at its start, or for a fixed
// disk (dataSize > 0) at its end after dataSize bytes, and syncs it.
func writeNew(f image.File, buf []byte, dataSize int64) error {
	var err error
	if dataSize > 0 {
		err = f.Truncate(dataSize)
	}
	if err == nil {
		_, err = f.WriteAt(buf, dataSize)
	}
	if err == nil {
		err = f.Sync()
	}
	if err != nil {
		return fmt.Errorf("vhd: create %s: %w", f.Name(), err)
	}
	return nil
}
