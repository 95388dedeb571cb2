// Package vhd reads and writes VHD images (Microsoft's Virtual Hard Disk
// format, "vpc" in qemu): fixed, dynamic and differencing disks, as
// blockdev Devices over an image.File. It registers itself with the image
// registry as "vhd".
//
// Every disk is an *Image on the blockmap core. A fixed disk is its data
// followed by a footer: every block is in the file where the guest sees
// it. Fixed disks have no magic at their start; probing finds them by a
// footer at the end that describes the file exactly. A dynamic disk's
// block allocation table (BAT) maps each block to its sector bitmap and
// data; a differencing disk's blocks are partial (the bitmap says which
// sectors are in the file, the rest comes from the parent, opened through
// image.OpenBacking). New blocks go at the end of the file; their bitmaps,
// the footer at the new end and the BAT entries reach the file at Flush,
// in the core's crash-safe order; the copy of the footer at offset 0
// keeps the image readable meanwhile.
package vhd

import (
	"encoding/binary"
	"fmt"
	"path"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
	"vdisk/internal/image/blockmap"
)

// Name is the format's name in the image registry.
const Name = "vhd"

func init() {
	image.Register(image.Format{
		Name:       Name,
		Probe:      probe,
		ProbeTail:  probeTail,
		OpenFile:   func(f image.File, opt image.OpenOptions) (blockdev.Device, error) { return Open(f, opt) },
		CreateFile: Create,
		InfoFile:   Info,
		CheckFile:  Check,
	})
}

// probe matches the footer copy at the start of dynamic and differencing
// disks.
func probe(b []byte) bool {
	return len(b) >= footerSize && string(b[:8]) == string(footerCookie)
}

// probeTail matches a fixed disk: a valid footer at the end of a file whose
// data is exactly the disk the footer describes. The checksum and the size
// must agree, so a raw disk's last sector is not mistaken for one by chance.
func probeTail(b []byte, size int64) bool {
	ft, err := parseFooter(b)
	if err != nil || ft.diskType != typeFixed {
		return false
	}
	vs, err := ft.virtualSize()
	return err == nil && vs <= size-footerSize && int64(ft.currentSize) == size-footerSize
}

// Image is an open VHD.
type Image struct {
	*blockmap.Map
	ft *footer
}

// meta is what load reads and checks: the footer and, for dynamic and
// differencing disks, the dynamic header and the BAT.
type meta struct {
	ft          *footer
	dh          *dynHeader
	size, fsize int64
	bat         []byte
}

func (md *meta) diff() bool { return md.ft.diskType == typeDifferencing }

// Open opens the VHD in f. A differencing disk's parent is opened
// through opt.Names, unless opt.NoBacking.
func Open(f image.File, opt image.OpenOptions) (*Image, error) {
	if err := opt.Validate(); err != nil {
		return nil, err
	}
	md, err := load(f)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, f.Name())
	}
	var parent blockdev.Device
	if md.diff() && !opt.NoBacking {
		if parent, err = openParent(f, md, opt); err != nil {
			return nil, err
		}
	}
	img, err := newImage(f, md, opt.ReadOnly, parent)
	if err != nil {
		if parent != nil {
			parent.Close()
		}
		return nil, fmt.Errorf("%w (in %s)", err, f.Name())
	}
	return img, nil
}

// footerOf finds the footer: the copy at offset 0 of a dynamic disk, or
// the last 512 bytes of the file.
func footerOf(f image.File, fsize int64) (*footer, error) {
	if fsize < footerSize {
		return nil, fmt.Errorf("vhd: file of %d bytes is too short for a footer: %w", fsize, ErrNotVHD)
	}
	b := make([]byte, footerSize)
	if _, err := f.ReadAt(b, 0); err != nil {
		return nil, fmt.Errorf("vhd: read footer: %w", err)
	}
	if !probe(b) {
		if _, err := f.ReadAt(b, fsize-footerSize); err != nil {
			return nil, fmt.Errorf("vhd: read footer: %w", err)
		}
		if !probe(b) {
			return nil, ErrNotVHD
		}
	}
	return parseFooter(b)
}

// load reads and bounds the metadata: the BAT is at most what the
// virtual size needs plus batSlack entries, and lies inside the file,
// before a byte of it is read.
func load(f image.File) (*meta, error) {
	fsize, err := f.Size()
	if err != nil {
		return nil, fmt.Errorf("vhd: %w", err)
	}
	ft, err := footerOf(f, fsize)
	if err != nil {
		return nil, err
	}
	size, err := ft.virtualSize()
	if err != nil {
		return nil, err
	}
	md := &meta{ft: ft, size: size, fsize: fsize}
	if ft.diskType == typeFixed {
		if size > fsize-footerSize {
			return nil, corruptf("fixed disk of %d bytes in a file of %d: truncated", size, fsize)
		}
		return md, nil
	}
	if ft.dataOffset > uint64(fsize) || int64(ft.dataOffset) > fsize-dynHeaderSize || ft.dataOffset < footerSize {
		return nil, corruptf("dynamic header offset %#x outside the file of %d bytes", ft.dataOffset, fsize)
	}
	hb := make([]byte, dynHeaderSize)
	if _, err := f.ReadAt(hb, int64(ft.dataOffset)); err != nil {
		return nil, fmt.Errorf("vhd: read dynamic header: %w", err)
	}
	if md.dh, err = parseDynHeader(hb); err != nil {
		return nil, err
	}
	dh := md.dh
	bs := int64(dh.blockSize)
	if bs < sectorSize || bs > maxBlockSize || bs&(bs-1) != 0 {
		return nil, corruptf("block size %d is not a power of two from 512 to %d", bs, maxBlockSize)
	}
	need := (size + bs - 1) / bs
	if int64(dh.maxEntries) < need {
		return nil, corruptf("BAT of %d entries is too small for %d bytes of %d-byte blocks", dh.maxEntries, size, bs)
	}
	if int64(dh.maxEntries) > need+batSlack {
		return nil, corruptf("BAT of %d entries (max table entries) is larger than the %d that %d bytes of %d-byte blocks need", dh.maxEntries, need, size, bs)
	}
	batBytes := int64(dh.maxEntries) * 4
	if dh.tableOffset < footerSize || dh.tableOffset > uint64(fsize) || int64(dh.tableOffset)+batBytes > fsize {
		return nil, corruptf("BAT of %d entries at %#x outside the file of %d bytes", dh.maxEntries, dh.tableOffset, fsize)
	}
	if batBytes > blockmap.MaxTable {
		return nil, fmt.Errorf("vhd: BAT of %d entries (max table entries) is larger than the %d MiB vdisk reads: %w", dh.maxEntries, blockmap.MaxTable>>20, image.ErrUnsupported)
	}
	md.bat = make([]byte, batBytes)
	if _, err := f.ReadAt(md.bat, int64(dh.tableOffset)); err != nil {
		return nil, fmt.Errorf("vhd: read BAT: %w", err)
	}
	return md, nil
}

// newImage serves the disk md describes on the blockmap core, checking
// every BAT entry.
func newImage(f image.File, md *meta, readOnly bool, parent blockdev.Device) (*Image, error) {
	c := blockmap.Config{Name: "vhd", File: f, Size: md.size, ReadOnly: readOnly, TableName: "BAT"}
	if md.dh == nil {
		c.BlockSize = fixedBlock
		c.Blocks = (md.size + fixedBlock - 1) / fixedBlock
		c.Codec = fixedCodec{}
		c.Reserved = []blockmap.Span{{Start: md.size, End: md.size + footerSize}}
		// qemu's vpc reports a fixed disk's data over holes of the file
		// as zeroes (BDRV_BLOCK_RECURSE).
		c.Status.Recurse = true
	} else {
		dh := md.dh
		bs := int64(dh.blockSize)
		bmSize := (bs/sectorSize/8 + sectorSize - 1) &^ (sectorSize - 1)
		cd := &codec{f: f, ft: md.ft, diff: md.diff(), bmSize: bmSize, bs: bs}
		batEnd := (int64(dh.tableOffset) + int64(len(md.bat)) + sectorSize - 1) &^ (sectorSize - 1)
		c.BlockSize, c.Blocks, c.Codec = bs, int64(dh.maxEntries), cd
		c.Table, c.TableOff = md.bat, int64(dh.tableOffset)
		c.Lead, c.BitmapSize = bmSize, bmSize
		c.Parent, c.Layered = parent, md.diff()
		// qemu's vpc reports an unallocated block of a dynamic disk as
		// zeroes of its own; a differencing disk's (which qemu does not
		// open) are its parent's.
		c.Status.OwnZero = !md.diff()
		c.Reserved = []blockmap.Span{
			{Start: 0, End: footerSize},
			{Start: int64(md.ft.dataOffset), End: int64(md.ft.dataOffset) + dynHeaderSize},
			{Start: int64(dh.tableOffset), End: batEnd},
		}
		for _, l := range dh.locators {
			if end := int64(l.offset) + int64(l.length); l.platform != 0 && l.length > 0 && l.offset < uint64(md.fsize) && end <= md.fsize {
				c.Reserved = append(c.Reserved, blockmap.Span{Start: int64(l.offset), End: (end + sectorSize - 1) &^ (sectorSize - 1)})
			}
		}
	}
	m, err := blockmap.New(c)
	if err != nil {
		return nil, err
	}
	return &Image{Map: m, ft: md.ft}, nil
}

// codec maps a dynamic or differencing disk's BAT: big-endian sector
// numbers of each block's sector bitmap, the data right after it.
type codec struct {
	f      image.File
	ft     *footer
	diff   bool
	bmSize int64
	bs     int64
}

func (c *codec) Get(t []byte, blk int64) blockmap.Entry {
	e := binary.BigEndian.Uint32(t[4*blk:])
	switch {
	case e == batUnused:
		return blockmap.Entry{}
	case c.diff:
		return blockmap.Entry{State: blockmap.Partial, Off: int64(e)*sectorSize + c.bmSize}
	}
	return blockmap.Entry{State: blockmap.Data, Off: int64(e)*sectorSize + c.bmSize}
}

func (c *codec) Put(t []byte, blk int64, e blockmap.Entry) int64 {
	binary.BigEndian.PutUint32(t[4*blk:], uint32((e.Off-c.bmSize)/sectorSize))
	return 4 * blk
}

// Place puts the block's bitmap and data at end: all set for a dynamic
// disk, as qemu writes it; clear (nothing from this file yet) for a
// differencing one.
func (c *codec) Place(blk, end int64) (blockmap.Placement, error) {
	pl := blockmap.Placement{Entry: blockmap.Entry{State: blockmap.Data, Off: end + c.bmSize}, End: end + c.bmSize + c.bs}
	if pl.End/sectorSize >= batUnused {
		return pl, fmt.Errorf("vhd: file would outgrow the 2 TiB the BAT can address: %w", blockdev.ErrNoSpace)
	}
	if c.diff {
		pl.Entry.State = blockmap.Partial
	} else {
		pl.Meta, pl.MetaOff = make([]byte, c.bmSize), end
		for i := range pl.Meta {
			pl.Meta[i] = 0xff
		}
	}
	return pl, nil
}

func (c *codec) BitmapAt(blk int64, e blockmap.Entry) (int64, error) { return e.Off - c.bmSize, nil }

// Commit moves the footer to the new end of the file.
func (c *codec) Commit(end int64) error {
	if _, err := c.f.WriteAt(c.ft.raw[:], end); err != nil {
		return fmt.Errorf("vhd: write footer: %w", err)
	}
	return nil
}

// fixedCodec maps a fixed disk: every block where the guest sees it.
type fixedCodec struct{}

func (fixedCodec) Get(_ []byte, blk int64) blockmap.Entry {
	return blockmap.Entry{State: blockmap.Data, Off: blk * fixedBlock}
}
func (fixedCodec) Put([]byte, int64, blockmap.Entry) int64 { return 0 }
func (fixedCodec) Place(int64, int64) (blockmap.Placement, error) {
	return blockmap.Placement{}, fmt.Errorf("vhd: a fixed disk allocates nothing")
}
func (fixedCodec) Commit(int64) error { return nil }

// parentName is the name a differencing disk records for its parent, as
// a slash path (relative to the image's directory): its first usable
// locator of the relative Windows path, the absolute one and the Mac URL,
// in that order, or else the file name the header records.
func parentName(f image.File, md *meta) string {
	for _, want := range []uint32{platformW2ru, platformW2ku, platformMacX} {
		for _, l := range md.dh.locators {
			if l.platform != want || l.length == 0 || l.length > maxLocatorLen ||
				l.offset > uint64(md.fsize) || int64(l.offset)+int64(l.length) > md.fsize {
				continue
			}
			b := make([]byte, l.length)
			if _, err := f.ReadAt(b, int64(l.offset)); err != nil {
				continue
			}
			if p := locatorPath(want, b); p != "" {
				return p
			}
		}
	}
	if md.dh.parentName == "" {
		return ""
	}
	return path.Base(windowsPath(md.dh.parentName))
}

// openParent opens a differencing disk's parent, a VHD, read-only.
func openParent(f image.File, md *meta, opt image.OpenOptions) (blockdev.Device, error) {
	d, err := image.OpenBacking(f, image.Backing{Name: parentName(f, md), Format: Name, What: "parent"}, opt)
	if err != nil {
		return nil, fmt.Errorf("vhd: %w", err)
	}
	if p, ok := d.(*Image); ok && p.ft.uuid != md.dh.parentUUID {
		opt.Log.Warn("parent's unique id differs from the one the differencing disk recorded", "image", f.Name(), "parent", md.dh.parentName)
	}
	if d.Size() < md.size {
		opt.Log.Warn("parent is smaller than the differencing disk; the rest reads as zeroes", "image", f.Name(), "parent-size", d.Size(), "size", md.size)
	}
	return d, nil
}
