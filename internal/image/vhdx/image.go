// Package vhdx reads and writes VHDX images (Microsoft's MS-VHDX format)
// as blockdev Devices: fixed, dynamic and differencing disks (sector
// bitmaps honoured). It registers itself with the image registry as
// "vhdx" and works on an image.File, wherever its bytes live; the parent
// of a differencing disk is opened through image.OpenBacking, under the
// trust policy of the options' Names.
//
// Opening an image whose log is dirty (a writer crashed with updates only
// in the log) replays the log's active sequence and clears the log GUID,
// which needs write access; a read-only open of such an image fails with
// ErrDirtyLog.
//
// An open image is served by the blockmap core, the BAT its table (see
// codec): a new payload block (and, in a differencing disk, its chunk's
// sector bitmap block) is taken from the end of the file, and the sector
// bitmaps and BAT sectors reach the file only at Flush, after the data is
// durable, in the core's crash-safe order. vdisk does not write through
// the log: each BAT update is an aligned 8-byte change inside one 4 KiB
// sector, written after what it points at, so a crash leaves the BAT
// pointing only at durable data. Before the first change the headers get
// new file- and data-write GUIDs, as the specification asks, written one
// header at a time so one valid header always remains.
package vhdx

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
	"vdisk/internal/image/blockmap"
)

// Name is the format's name in the image registry.
const Name = "vhdx"

// errUnsupported is image.ErrUnsupported, for short.
var errUnsupported = image.ErrUnsupported

func init() {
	image.Register(image.Format{
		Name:       Name,
		Probe:      probe,
		OpenFile:   openFile,
		CreateFile: createFile,
		InfoFile:   info,
		CheckFile:  check,
	})
}

// probe matches the file identifier's signature.
func probe(b []byte) bool { return len(b) >= 8 && bytes.Equal(b[:8], signatureFileID) }

// Image is an open VHDX: the blockmap core over its BAT, with the
// headers.
type Image struct {
	*blockmap.Map
	f       image.File
	m       *metadata
	batReg  region
	metaReg region
	cr      int64 // chunk ratio

	hmu     sync.Mutex // guards the headers
	hdrs    [2]*header
	cur     int
	touched bool // the headers have this session's write GUIDs
}

// openFile opens the VHDX in f (the registry's OpenFile; f is the
// Image's from then on). A dirty log is replayed (read-write opens only);
// the parent of a differencing disk is opened through opt.Names.
func openFile(f image.File, opt image.OpenOptions) (blockdev.Device, error) {
	img, bat, err := load(f, opt.ReadOnly)
	var parent blockdev.Device
	if err == nil && img.m.hasParent && !opt.NoBacking {
		parent, err = openParent(img, opt)
	}
	if err == nil {
		if err = img.serve(bat, opt.ReadOnly, parent); err != nil && parent != nil {
			parent.Close()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, f.Name())
	}
	return img, nil
}

// load reads the headers (replaying a dirty log when writable), the region
// table, the metadata and the BAT: every table is sized by what the
// virtual size needs and checked against the file before it is read.
func load(f image.File, readOnly bool) (*Image, []byte, error) {
	fsize, err := f.Size()
	if err != nil {
		return nil, nil, fmt.Errorf("vhdx: %w", err)
	}
	id := make([]byte, 8)
	if _, err := f.ReadAt(id, 0); err != nil || !probe(id) {
		return nil, nil, ErrNotVHDX
	}
	if fsize < 3*mib {
		return nil, nil, corruptf("file of %d bytes is too short (the headers, the BAT and the metadata take at least 3 MiB)", fsize)
	}
	img := &Image{f: f}
	if img.hdrs, img.cur, err = readHeaders(f, fsize); err != nil {
		return nil, nil, err
	}
	if h := img.hdrs[img.cur]; h.logGUID != (guid{}) {
		if readOnly {
			return nil, nil, ErrDirtyLog
		}
		if fsize, err = replay(f, fsize, h); err != nil {
			return nil, nil, err
		}
		if err := img.updateHeaders(guid{}, false); err != nil {
			return nil, nil, err
		}
	}
	if img.batReg, img.metaReg, err = readRegions(f, fsize); err != nil {
		return nil, nil, err
	}
	if img.m, err = readMetadata(f, img.metaReg); err != nil {
		return nil, nil, err
	}
	img.cr = img.m.chunkRatio()
	n := img.m.batEntries()
	if n*8 > img.batReg.length {
		return nil, nil, corruptf("BAT region of %d bytes (in a file of %d) is too small for the %d entries a disk of %d bytes in %d-byte blocks needs",
			img.batReg.length, fsize, n, img.m.size, img.m.blockSize)
	}
	if n*8 > blockmap.MaxTable {
		return nil, nil, fmt.Errorf("vhdx: BAT of %d entries (a disk of %d bytes in %d-byte blocks) is larger than the %d MiB vdisk reads: %w",
			n, img.m.size, img.m.blockSize, blockmap.MaxTable>>20, errUnsupported)
	}
	bat := make([]byte, n*8)
	if _, err := f.ReadAt(bat, img.batReg.off); err != nil {
		return nil, nil, fmt.Errorf("vhdx: read BAT: %w", err)
	}
	return img, bat, nil
}

// serve checks the BAT and puts the image on the blockmap core.
func (img *Image) serve(bat []byte, readOnly bool, parent blockdev.Device) error {
	fsize, err := img.f.Size()
	if err != nil {
		return fmt.Errorf("vhdx: %w", err)
	}
	res, err := img.checkBAT(bat, fsize)
	if err != nil {
		return err
	}
	m, bs := img.m, img.m.blockSize
	cd := &codec{table: bat, cr: img.cr, bs: bs, slice: bs / m.lss / 8, diff: m.hasParent}
	img.Map, err = blockmap.New(blockmap.Config{Name: "vhdx", File: img.f, Size: m.size, BlockSize: bs,
		Table: bat, TableOff: img.batReg.off, Unit: 4096, TableName: "BAT", Codec: cd,
		Reserved: res, End: (fsize + mib - 1) / mib * mib,
		BitmapSize: cd.slice, SectorSize: m.lss, LSBFirst: true,
		Parent: parent, Layered: m.hasParent, ReadOnly: readOnly, BeforeWrite: img.touch,
		Blocks: img.payloadEntries(),
		// qemu's vhdx has no block status: it reports every run as
		// allocated data. A differencing disk, which qemu does not open,
		// reports its blocks, the rest being its parent's.
		Status: blockmap.StatusRules{Whole: !m.hasParent}})
	return err
}

// payloadEntries counts the BAT's payload block entries.
func (img *Image) payloadEntries() int64 {
	n := img.m.batEntries()
	return n - n/(img.cr+1)
}

// checkBAT verifies every entry's state, and that the sector bitmap
// blocks lie in the file, clear of the metadata and of each other. It
// returns the file's metadata and bitmap blocks, which the payload blocks
// must keep clear of (the core checks those).
func (img *Image) checkBAT(bat []byte, fsize int64) ([]blockmap.Span, error) {
	h := img.hdrs[img.cur]
	res := []blockmap.Span{{Start: 0, End: mib}, {Start: h.logOff, End: h.logOff + h.logLen},
		{Start: img.batReg.off, End: img.batReg.off + img.batReg.length}, {Start: img.metaReg.off, End: img.metaReg.off + img.metaReg.length}}
	for i := range int64(len(bat) / 8) {
		e := binary.LittleEndian.Uint64(bat[8*i:])
		switch state := e & 7; {
		case (i+1)%(img.cr+1) != 0: // a payload block
			switch state {
			case stateNotPresent, stateUndefined, stateZero, stateUnmapped, stateFullPresent:
			case statePartPresent:
				if !img.m.hasParent {
					return nil, corruptf("BAT entry %d is partially present in a disk without a parent", i)
				}
			default:
				return nil, corruptf("BAT entry %d has state %d", i, state)
			}
		case state == stateBitmapHere:
			off := int64(e>>batOffsetShift) * mib
			if off < mib || off > fsize-mib {
				return nil, corruptf("sector bitmap entry %d points at %#x (+%d), outside the file of %d bytes: truncated", i, off, mib, fsize)
			}
			res = append(res, blockmap.Span{Start: off, End: off + mib})
		case state != stateBitmapAbsent:
			return nil, corruptf("sector bitmap entry %d has state %d", i, state)
		}
	}
	sorted := slices.SortedFunc(slices.Values(res), func(a, b blockmap.Span) int { return cmp.Compare(a.Start, b.Start) })
	var end int64
	for _, s := range sorted {
		if s.Start < end {
			return nil, corruptf("BAT entries or regions overlap at %#x", s.Start)
		}
		end = max(end, s.End)
	}
	return res, nil
}

// codec maps payload block blk to BAT entry blk + blk/cr (the sector
// bitmap entries are interleaved every cr entries): FULLY PRESENT blocks
// are Data, PARTIALLY PRESENT ones Partial (their sector bitmap is their
// slice of the chunk's bitmap block), ZERO ones Zero; the rest read from
// the parent in a differencing disk and as zeroes otherwise.
type codec struct {
	table         []byte // the core's table, for Place
	cr, bs, slice int64
	diff          bool
}

func (c *codec) index(blk int64) int64       { return blk + blk/c.cr }
func (c *codec) bitmapIndex(blk int64) int64 { return blk/c.cr*(c.cr+1) + c.cr }
func (c *codec) entry(i int64) uint64        { return binary.LittleEndian.Uint64(c.table[8*i:]) }

func (c *codec) Get(t []byte, blk int64) blockmap.Entry {
	e := binary.LittleEndian.Uint64(t[8*c.index(blk):])
	off := int64(e>>batOffsetShift) * mib
	switch e & 7 {
	case stateFullPresent:
		return blockmap.Entry{State: blockmap.Data, Off: off}
	case statePartPresent:
		return blockmap.Entry{State: blockmap.Partial, Off: off}
	case stateZero:
		return blockmap.Entry{State: blockmap.Zero}
	}
	if c.diff {
		return blockmap.Entry{}
	}
	return blockmap.Entry{State: blockmap.Zero}
}

func (c *codec) Put(t []byte, blk int64, e blockmap.Entry) int64 {
	st := map[blockmap.State]uint64{blockmap.Data: stateFullPresent, blockmap.Partial: statePartPresent, blockmap.Zero: stateZero}[e.State]
	i := c.index(blk)
	binary.LittleEndian.PutUint64(t[8*i:], uint64(e.Off/mib)<<batOffsetShift|st)
	return 8 * i
}

// Place puts a new block at the next whole MiB. In a differencing disk a
// block that showed the parent becomes partially present, its chunk's
// sector bitmap block placed first when the chunk has none; a ZERO block
// becomes fully present (it reads as zeroes until written).
func (c *codec) Place(blk, end int64) (blockmap.Placement, error) {
	off := (end + mib - 1) / mib * mib
	var pl blockmap.Placement
	pl.Entry.State = blockmap.Data
	if c.diff && c.entry(c.index(blk))&7 != stateZero {
		if bi := c.bitmapIndex(blk); c.entry(bi)&7 != stateBitmapHere {
			binary.LittleEndian.PutUint64(c.table[8*bi:], uint64(off/mib)<<batOffsetShift|stateBitmapHere)
			pl.Also = []int64{8 * bi}
			off += mib
		}
		pl.Entry.State = blockmap.Partial
	}
	pl.Entry.Off, pl.End = off, off+c.bs
	return pl, nil
}

// BitmapAt is block blk's slice of its chunk's sector bitmap block.
func (c *codec) BitmapAt(blk int64, _ blockmap.Entry) (int64, error) {
	b := c.entry(c.bitmapIndex(blk))
	if b&7 != stateBitmapHere {
		return 0, corruptf("partially present block %d has no sector bitmap", blk)
	}
	return int64(b>>batOffsetShift)*mib + blk%c.cr*c.slice, nil
}

// Commit writes nothing: the BAT is all the metadata allocation changes.
func (c *codec) Commit(int64) error { return nil }

// touch gives the headers this session's write GUIDs before the first
// change (the core's BeforeWrite).
func (img *Image) touch() error {
	img.hmu.Lock()
	defer img.hmu.Unlock()
	if img.touched {
		return nil
	}
	if err := img.updateHeaders(guid{}, true); err != nil {
		return err
	}
	img.touched = true
	return nil
}

// updateHeaders writes the current header, with a higher sequence number,
// this session's file-write GUID, a new data-write GUID when newData, and
// logGUID, to both header slots, one at a time with a sync after each, so
// that a valid header exists throughout. Called with hmu held (or before
// the image is shared).
func (img *Image) updateHeaders(logGUID guid, newData bool) error {
	h := *img.hdrs[img.cur]
	h.fileWrite = newGUID()
	if newData {
		h.dataWrite = newGUID()
	}
	h.logGUID = logGUID
	for range 2 {
		h.seq++
		slot := 1 - img.cur
		off := int64(header1Off)
		if slot == 1 {
			off = header2Off
		}
		nh := h
		if _, err := img.f.WriteAt(nh.encode(), off); err != nil {
			return fmt.Errorf("vhdx: write header %d: %w", slot+1, err)
		}
		if err := img.f.Sync(); err != nil {
			return fmt.Errorf("vhdx: sync header: %w", err)
		}
		img.hdrs[slot], img.cur = &nh, slot
	}
	return nil
}

// Info reports the disk's logical and physical sector sizes and whether it
// is read-only.
func (img *Image) Info() blockdev.Info {
	i := img.Map.Info()
	i.LogicalBlockSize, i.PhysicalBlockSize = uint32(img.m.lss), uint32(img.m.pss)
	return i
}
