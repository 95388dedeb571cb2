// Package vhd reads and writes VHD images (Microsoft's Virtual Hard Disk
// format, "vpc" in qemu): fixed, dynamic and differencing disks, as
// blockdev Devices. It registers itself with the image registry as "vhd".
//
// A fixed disk is its data followed by a footer; Open serves it as a
// window on the raw file. Fixed disks have no magic at their start, so
// probing (like qemu's) sees them as raw: open them with format "vhd".
//
// A dynamic or differencing disk is an *Image. One mutex (mu) guards the
// block allocation table (BAT), the sector bitmaps and the allocator; data
// of allocated blocks is read and written outside it, so requests proceed in
// parallel. Writes that must change a differencing disk's sector bitmap
// (copying a partial sector up from the parent) run under mu.
//
// Metadata reaches the file in an order that keeps the image consistent:
// new blocks and their data are written first, and the bitmaps, the footer
// at the new end of the file and the BAT entries that point at them are
// written by Flush, after a sync of the data. A crash before a Flush loses
// unflushed writes and leaves at most unreferenced space at the end of the
// file; the copy of the footer at offset 0 keeps the image readable.
package vhd

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"sync"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// Name is the format's name in the image registry.
const Name = "vhd"

// maxCachedBitmaps bounds the clean sector bitmaps a differencing image
// keeps in memory.
const maxCachedBitmaps = 4096

func init() {
	image.Register(image.Format{
		Name:      Name,
		Probe:     probe,
		ProbeTail: probeTail,
		Open:      Open,
		Create:    Create,
		Info:      Info,
		Check:     Check,
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

// Image is an open dynamic or differencing VHD. See the package comment for
// its concurrency contract.
type Image struct {
	f          *os.File
	path       string
	ft         *footer
	dh         *dynHeader
	size       int64
	blockSize  int64
	bitmapSize int64
	diff       bool
	readOnly   bool
	log        *slog.Logger
	parent     blockdev.Device // differencing disks without NoBacking

	mu       sync.Mutex
	closed   bool
	bat      []uint32
	batDirty map[int64]bool    // BAT sectors to write
	bitmaps  map[int64]*bitmap // block → its sector bitmap (differencing, and new blocks)
	freeOff  int64             // where the next block goes (and the footer sits)
	grown    bool              // the footer must be rewritten at freeOff
}

// bitmap is a block's sector bitmap: bit 7 of byte 0 is the block's first
// sector; a set bit means the sector is in this file.
type bitmap struct {
	b     []byte
	dirty bool
}

func (m *bitmap) has(s int64) bool { return m.b[s/8]&(0x80>>(s%8)) != 0 }
func (m *bitmap) set(s int64)      { m.b[s/8] |= 0x80 >> (s % 8) }

var (
	_ blockdev.Device     = (*Image)(nil)
	_ blockdev.Trimmer    = (*Image)(nil)
	_ blockdev.ZeroWriter = (*Image)(nil)
	_ blockdev.Extenter   = (*Image)(nil)
	_ blockdev.Describer  = (*Image)(nil)
)

// Open opens the VHD at path: a fixed disk as a window on its file (with
// the file's Trimmer, ZeroWriter and Extenter), a dynamic or differencing
// one as an *Image.
func Open(path string, opt image.OpenOptions) (blockdev.Device, error) {
	if err := opt.Validate(); err != nil {
		return nil, err
	}
	ft, fsize, err := readFooter(path)
	if err != nil {
		return nil, err
	}
	size, err := ft.virtualSize()
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, path)
	}
	if ft.diskType == typeFixed {
		if size > fsize-footerSize {
			return nil, fmt.Errorf("%w (in %s)", corruptf("fixed disk of %d bytes in a file of %d: truncated", size, fsize), path)
		}
		f, err := blockdev.OpenFile(path, blockdev.FileOptions{ReadOnly: opt.ReadOnly, NoLock: opt.NoLock})
		if err != nil {
			return nil, fmt.Errorf("vhd: %w", err)
		}
		return blockdev.Section(f, 0, size), nil
	}
	return OpenDynamic(path, opt)
}

// readFooter finds the footer: the copy at offset 0 of a dynamic disk, or
// the last 512 bytes of the file.
func readFooter(path string) (*footer, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, fmt.Errorf("vhd: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, 0, fmt.Errorf("vhd: %w", err)
	}
	ft, err := footerOf(f, st.Size())
	if err != nil {
		return nil, 0, fmt.Errorf("%w (in %s)", err, path)
	}
	return ft, st.Size(), nil
}

func footerOf(f io.ReaderAt, fsize int64) (*footer, error) {
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

// OpenDynamic opens a dynamic or differencing VHD.
func OpenDynamic(path string, opt image.OpenOptions) (*Image, error) {
	if err := opt.Validate(); err != nil {
		return nil, err
	}
	f, err := image.OpenPath("vhd", path, opt)
	if err != nil {
		return nil, err
	}
	img, err := open(f, path, opt)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%w (in %s)", err, path)
	}
	return img, nil
}

func open(f *os.File, path string, opt image.OpenOptions) (*Image, error) {
	img, err := load(f, opt.ReadOnly)
	if err != nil {
		return nil, err
	}
	img.path, img.log = path, opt.Log
	if img.diff && !opt.NoBacking {
		if img.parent, err = openParent(path, img.dh, opt); err != nil {
			return nil, err
		}
		if img.parent.Size() < img.size {
			img.log.Warn("parent is smaller than the differencing disk; the rest reads as zeroes", "image", path, "parent-size", img.parent.Size(), "size", img.size)
		}
	}
	return img, nil
}

// load reads and validates the metadata of a dynamic or differencing disk.
func load(f *os.File, readOnly bool) (*Image, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("vhd: %w", err)
	}
	fsize := st.Size()
	ft, err := footerOf(f, fsize)
	if err != nil {
		return nil, err
	}
	if ft.diskType == typeFixed {
		return nil, fmt.Errorf("vhd: fixed disk where a dynamic one was expected: %w", image.ErrUnsupported)
	}
	size, err := ft.virtualSize()
	if err != nil {
		return nil, err
	}
	if ft.dataOffset > uint64(fsize) || int64(ft.dataOffset) > fsize-dynHeaderSize || ft.dataOffset < footerSize {
		return nil, corruptf("dynamic header offset %#x outside the file of %d bytes", ft.dataOffset, fsize)
	}
	hb := make([]byte, dynHeaderSize)
	if _, err := f.ReadAt(hb, int64(ft.dataOffset)); err != nil {
		return nil, fmt.Errorf("vhd: read dynamic header: %w", err)
	}
	dh, err := parseDynHeader(hb)
	if err != nil {
		return nil, err
	}
	bs := int64(dh.blockSize)
	if bs < sectorSize || bs > maxBlockSize || bs&(bs-1) != 0 {
		return nil, corruptf("block size %d is not a power of two from 512 to %d", bs, maxBlockSize)
	}
	need := (size + bs - 1) / bs
	if int64(dh.maxEntries) < need {
		return nil, corruptf("BAT of %d entries is too small for %d bytes of %d-byte blocks", dh.maxEntries, size, bs)
	}
	if int64(dh.maxEntries) > (maxSectors*sectorSize+bs-1)/bs {
		return nil, corruptf("BAT of %d entries is larger than the VHD limit", dh.maxEntries)
	}
	batBytes := int64(dh.maxEntries) * 4
	if dh.tableOffset < footerSize || dh.tableOffset > uint64(fsize) || int64(dh.tableOffset)+batBytes > fsize {
		return nil, corruptf("BAT of %d entries at %#x outside the file of %d bytes", dh.maxEntries, dh.tableOffset, fsize)
	}
	img := &Image{
		f: f, ft: ft, dh: dh, size: size, blockSize: bs,
		bitmapSize: (bs/sectorSize/8 + sectorSize - 1) &^ (sectorSize - 1),
		diff:       ft.diskType == typeDifferencing,
		readOnly:   readOnly,
		batDirty:   map[int64]bool{},
		bitmaps:    map[int64]*bitmap{},
	}
	raw := make([]byte, batBytes)
	if _, err := f.ReadAt(raw, int64(dh.tableOffset)); err != nil {
		return nil, fmt.Errorf("vhd: read BAT: %w", err)
	}
	img.bat = make([]uint32, dh.maxEntries)
	for i := range img.bat {
		img.bat[i] = uint32(raw[4*i])<<24 | uint32(raw[4*i+1])<<16 | uint32(raw[4*i+2])<<8 | uint32(raw[4*i+3])
	}
	batEnd := (int64(dh.tableOffset) + batBytes + sectorSize - 1) &^ (sectorSize - 1)
	if img.freeOff, err = img.checkBAT(fsize, batEnd); err != nil {
		return nil, err
	}
	return img, nil
}

// checkBAT verifies that every allocated block lies inside the file, clear
// of the metadata and of every other block, and returns the end of the last
// one (or of the metadata): where the next block goes.
func (img *Image) checkBAT(fsize, batEnd int64) (int64, error) {
	type span struct{ start, end int64 }
	meta := []span{
		{0, footerSize},
		{int64(img.ft.dataOffset), int64(img.ft.dataOffset) + dynHeaderSize},
		{int64(img.dh.tableOffset), batEnd},
	}
	for _, l := range img.dh.locators {
		if l.platform != 0 && l.length > 0 && l.offset < uint64(fsize) {
			meta = append(meta, span{int64(l.offset), int64(l.offset) + (int64(l.length)+sectorSize-1)&^(sectorSize-1)})
		}
	}
	var blocks []span
	free := batEnd
	for _, s := range meta {
		free = max(free, s.end)
	}
	step := img.bitmapSize + img.blockSize
	for i, e := range img.bat {
		if e == batUnused {
			continue
		}
		start := int64(e) * sectorSize
		if start+step > fsize {
			return 0, corruptf("BAT entry %d (sector %#x) points past the end of the file of %d bytes: truncated", i, e, fsize)
		}
		for _, m := range meta {
			if start < m.end && m.start < start+step {
				return 0, corruptf("BAT entry %d (sector %#x) overlaps the image metadata", i, e)
			}
		}
		blocks = append(blocks, span{start, start + step})
		free = max(free, start+step)
	}
	sort.Slice(blocks, func(i, j int) bool { return blocks[i].start < blocks[j].start })
	for i := 1; i < len(blocks); i++ {
		if blocks[i].start < blocks[i-1].end {
			return 0, corruptf("two BAT entries share the block at %#x", blocks[i].start)
		}
	}
	return free, nil
}

// Size returns the virtual disk size.
func (img *Image) Size() int64 { return img.size }

// BlockSize returns the size of the image's blocks.
func (img *Image) BlockSize() int64 { return img.blockSize }

// Parent returns the parent device of a differencing disk, nil without one.
func (img *Image) Parent() blockdev.Device { return img.parent }

// Info reports block sizes and whether the image is read-only.
func (img *Image) Info() blockdev.Info {
	return blockdev.Info{LogicalBlockSize: sectorSize, PhysicalBlockSize: 4096, ReadOnly: img.readOnly}
}

// Close flushes every change and releases the file and the parent.
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
	if img.parent != nil {
		img.parent.Close()
	}
	if cerr := img.f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("vhd: close: %w", cerr)
	}
	return err
}
