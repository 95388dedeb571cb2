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
// vdisk does not write through the log: it orders its updates instead. A
// new payload block is taken from the end of the file (extended sparse, so
// it reads as zeroes), the data is written there, and only Flush, after
// syncing the data, writes the sector bitmaps of a differencing disk,
// syncs, writes the BAT entries that point at the new blocks (each an
// aligned 8-byte update inside one 4 KiB sector) and syncs again. A crash
// at any point leaves the BAT pointing only at durable data; at worst a
// block at the end of the file is unreferenced. Before the first change
// the headers get new file- and data-write GUIDs, as the specification
// asks, written one header at a time so one valid header always remains.
//
// An Image serves reads and writes from many goroutines at once. One mutex
// (mu) guards the BAT, the sector bitmaps, the headers and the allocator;
// data moves outside it, except writes to a differencing disk that must
// change its sector bitmap (copying partial sectors up from the parent),
// which run under mu.
package vhdx

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"log/slog"
	"sort"
	"sync"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
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

// Image is an open VHDX. See the package comment for its concurrency
// contract.
type Image struct {
	f        image.File
	m        *metadata
	batReg   region
	metaReg  region
	cr       int64 // chunk ratio
	readOnly bool
	log      *slog.Logger
	parent   blockdev.Device

	mu       sync.Mutex
	closed   bool
	hdrs     [2]*header
	cur      int
	bat      []uint64
	batDirty map[int64]bool         // BAT sectors (4 KiB) to write
	sbm      map[int64]*bitmapSlice // payload block → its part of the chunk's sector bitmap
	fileEnd  int64
	touched  bool // the headers have this session's write GUIDs
}

var (
	_ blockdev.Device     = (*Image)(nil)
	_ blockdev.Trimmer    = (*Image)(nil)
	_ blockdev.ZeroWriter = (*Image)(nil)
	_ blockdev.Extenter   = (*Image)(nil)
	_ blockdev.Describer  = (*Image)(nil)
)

// openFile opens the VHDX in f (the registry's OpenFile; f is the
// Image's from then on). A dirty log is replayed (read-write opens only);
// the parent of a differencing disk is opened through opt.Names.
func openFile(f image.File, opt image.OpenOptions) (blockdev.Device, error) {
	img, err := load(f, opt.ReadOnly)
	if err == nil {
		img.log = opt.Log
		if img.m.hasParent && !opt.NoBacking {
			img.parent, err = openParent(img, opt)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, f.Name())
	}
	return img, nil
}

// load reads the headers (replaying a dirty log when writable), the region
// table, the metadata and the BAT, and checks them: every table is sized
// by what the virtual size needs and checked against the file before it
// is read.
func load(f image.File, readOnly bool) (*Image, error) {
	fsize, err := f.Size()
	if err != nil {
		return nil, fmt.Errorf("vhdx: %w", err)
	}
	id := make([]byte, 8)
	if _, err := f.ReadAt(id, 0); err != nil || !probe(id) {
		return nil, ErrNotVHDX
	}
	if fsize < 3*mib {
		return nil, corruptf("file of %d bytes is too short (the headers, the BAT and the metadata take at least 3 MiB)", fsize)
	}
	img := &Image{f: f, readOnly: readOnly, batDirty: map[int64]bool{}, sbm: map[int64]*bitmapSlice{}}
	if img.hdrs, img.cur, err = readHeaders(f, fsize); err != nil {
		return nil, err
	}
	if h := img.hdrs[img.cur]; h.logGUID != (guid{}) {
		if readOnly {
			return nil, ErrDirtyLog
		}
		if fsize, err = replay(f, fsize, h); err != nil {
			return nil, err
		}
		if err := img.updateHeaders(guid{}, false); err != nil {
			return nil, err
		}
	}
	if img.batReg, img.metaReg, err = readRegions(f, fsize); err != nil {
		return nil, err
	}
	if img.m, err = readMetadata(f, img.metaReg); err != nil {
		return nil, err
	}
	img.cr = img.m.chunkRatio()
	n := img.m.batEntries()
	if n*8 > img.batReg.length || n*8 > maxBAT {
		return nil, corruptf("BAT region of %d bytes (in a file of %d) is too small for the %d entries a disk of %d bytes in %d-byte blocks needs",
			img.batReg.length, fsize, n, img.m.size, img.m.blockSize)
	}
	raw := make([]byte, n*8)
	if _, err := f.ReadAt(raw, img.batReg.off); err != nil {
		return nil, fmt.Errorf("vhdx: read BAT: %w", err)
	}
	img.bat = make([]uint64, n)
	for i := range img.bat {
		img.bat[i] = binary.LittleEndian.Uint64(raw[8*i:])
	}
	if err := img.checkBAT(fsize); err != nil {
		return nil, err
	}
	return img, nil
}

// isBitmap reports whether BAT entry i is a sector bitmap entry.
func (img *Image) isBitmap(i int64) bool { return (i+1)%(img.cr+1) == 0 }

// payloadIndex is the BAT index of payload block b.
func (img *Image) payloadIndex(b int64) int64 { return b + b/img.cr }

// checkBAT verifies every entry's state, and that allocated blocks lie in
// the file, clear of the metadata and of each other. It sets fileEnd.
func (img *Image) checkBAT(fsize int64) error {
	type span struct{ start, end int64 }
	h := img.hdrs[img.cur]
	spans := []span{{0, mib}, {h.logOff, h.logOff + h.logLen},
		{img.batReg.off, img.batReg.off + img.batReg.length}, {img.metaReg.off, img.metaReg.off + img.metaReg.length}}
	for i, e := range img.bat {
		state := e & 7
		off := int64(e>>batOffsetShift) * mib
		size := img.m.blockSize
		if img.isBitmap(int64(i)) {
			size = mib
			switch state {
			case stateBitmapAbsent:
				continue
			case stateBitmapHere:
			default:
				return corruptf("sector bitmap entry %d has state %d", i, state)
			}
		} else {
			switch state {
			case stateNotPresent, stateUndefined, stateZero, stateUnmapped:
				continue
			case stateFullPresent:
			case statePartPresent:
				if !img.m.hasParent {
					return corruptf("BAT entry %d is partially present in a disk without a parent", i)
				}
			default:
				return corruptf("BAT entry %d has state %d", i, state)
			}
		}
		if off < mib || off > fsize || size > fsize-off {
			return corruptf("BAT entry %d points at %#x (+%d), outside the file of %d bytes: truncated", i, off, size, fsize)
		}
		spans = append(spans, span{off, off + size})
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].start < spans[j].start })
	img.fileEnd = (fsize + mib - 1) / mib * mib
	for i, s := range spans {
		if i > 0 && s.start < spans[i-1].end {
			return corruptf("BAT entries or regions overlap at %#x", s.start)
		}
		img.fileEnd = max(img.fileEnd, s.end)
	}
	return nil
}

// updateHeaders writes the current header, with a higher sequence number,
// this session's file-write GUID, a new data-write GUID when newData, and
// logGUID, to both header slots, one at a time with a sync after each, so
// that a valid header exists throughout. Called with mu held (or before
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

// Size returns the virtual disk size.
func (img *Image) Size() int64 { return img.m.size }

// BlockSize returns the payload block size.
func (img *Image) BlockSize() int64 { return img.m.blockSize }

// Parent returns the parent of a differencing disk, nil without one.
func (img *Image) Parent() blockdev.Device { return img.parent }

// Info reports the disk's logical and physical sector sizes and whether it
// is read-only.
func (img *Image) Info() blockdev.Info {
	return blockdev.Info{LogicalBlockSize: uint32(img.m.lss), PhysicalBlockSize: uint32(img.m.pss), ReadOnly: img.readOnly}
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
		err = fmt.Errorf("vhdx: close: %w", cerr)
	}
	return err
}
