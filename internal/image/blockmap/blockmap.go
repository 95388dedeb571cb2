// Package blockmap is the block-mapped core that image formats whose
// guest disk is cut into fixed-size blocks, each found through a table
// entry, sit on: vhd and vdi today, vhdx and vmdk next (qcow2, with its
// refcounts, L2 cache and snapshots, stays its own).
//
// A Map serves the blockdev.Device (with Trimmer, ZeroWriter, Extenter
// and Describer) over an image.File. The format reads and checks its
// header, loads its table (the on-disk bytes, bounded by the format
// against the virtual size and the file size before anything is
// allocated) and hands both to New with a Codec: how an entry is encoded,
// where a new block goes and what is written with it. The Map keeps the
// table in memory as those bytes (so memory is what the table takes on
// disk), splits every request into per-block pieces in one loop, and
// serves each piece by the block's state:
//
//   - Unallocated: no storage; reads come from the parent layer through
//     image.ReadParent (zeroes without one);
//   - Zero: reads as zeroes whatever the parent holds;
//   - Data: the whole block is in the file at Entry.Off;
//   - Partial: the block has storage at Entry.Off and a sector bitmap
//     (where the Codec's BitmapAt says) tells which sectors are in the
//     file; the others come from the parent.
//
// # Allocation and crash safety
//
// A write to a block without storage allocates it under the Map's one
// mutex: the Codec places it at the end of what is allocated, the file is
// cut there and extended (so the block reads as zeroes whatever a crash
// left behind), and in a layered image the part of a Data block the write
// does not cover is first copied up from the parent. Table entries,
// sector bitmaps and the format's own metadata (Codec.Commit: VHD's
// footer at the new end, VDI's allocated count) reach the file only at
// Flush, in this order: sync the data; write bitmaps, the bytes placed
// with new blocks and Commit; sync; write the changed table units (and
// only those); sync. A crash before a Flush loses unflushed writes and
// leaves at most unreferenced space at the end of the file.
//
// # Errors of partial I/O
//
// ReadAt and WriteAt follow io.ReaderAt and io.WriterAt: n < len(p) only
// with an error. A request is served piece by piece in order, and n is
// the length of the prefix of p whose pieces were all fully transferred;
// bytes of p past n may or may not have reached the image (a write) or
// been filled (a read). A range outside the disk, a closed Map or a write
// to a read-only one transfers nothing (n = 0).
//
// # Concurrency
//
// Every method is safe for concurrent use. The mutex guards the table,
// the bitmaps and the allocator; data of Data blocks moves outside it.
// Allocations (with their copy-up) and writes that change a sector bitmap
// run under it, so no reader sees a block before its bytes are there.
//
// # How vhdx and vmdk map onto it
//
// VHDX: the BAT is the table; Codec.Get and Put map payload block blk to
// entry blk + blk/chunkRatio (the sector-bitmap entries interleaved every
// chunk ratio entries are skipped) and decode the 3-bit state: FULLY
// PRESENT is Data, PARTIALLY PRESENT is Partial, ZERO is Zero, NOT
// PRESENT / UNMAPPED / UNDEFINED are Unallocated in a differencing disk
// (read from the parent) and Zero otherwise. Unit is 4096 (the BAT is
// rewritten in 4 KiB sectors). Place puts a 1 MiB-aligned block at the
// end; in a differencing disk it returns Partial and BitmapAt returns the
// block's slice of its chunk's sector-bitmap block (placing that block
// first when the chunk has none, and recording its BAT entry with Put),
// with LSBFirst bits and SectorSize the logical sector size. Commit
// writes nothing (the headers' write GUIDs are the format's business
// before the first change, through a hook of its own around WriteAt).
//
// VMDK: one Map per extent, over that extent's File, and the image's
// loop over extents hands each piece to its extent's Map. A flat
// extent's Codec says Data at its offset in the file (as vhd's fixed
// disks do), a ZERO extent's Zero everywhere. A sparse extent's table is
// its grain tables side by side in guest order, Unit one grain table;
// Get decodes 0 as Unallocated, 1 (with the zeroed-grain flag) as Zero
// and a sector as Data (SectorSize is the grain, so no Partial blocks);
// with a parent the extent is Layered and new grains are copied up. What
// vmdk needs beyond vhd and vdi is a table whose units lie anywhere in
// the file and may not exist yet: its Codec implements Locator, whose
// TableAt gives a unit's file offsets (the grain directory's entry and
// the redundant directory's), and Place, when the grain's table does not
// exist, puts the new grain table (and its copy) at end and the grain
// after it, recording them in the directory that Commit writes. A new
// table reads as zeroes until Flush writes it (everything the core
// allocates does), so a directory that reaches the file first points at
// a table of unallocated grains. Units that lie nowhere are loaded as
// zeroes, without reading. Compressed grains (streamOptimized extents,
// read-only) stay outside the core, served by the format's own read
// path.
package blockmap

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"sync"
	"syscall"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// State says where a block's bytes are.
type State uint8

const (
	// Unallocated blocks have no storage: they read from the parent
	// layer, or as zeroes without one.
	Unallocated State = iota
	// Zero blocks read as zeroes whatever the parent holds.
	Zero
	// Data blocks are wholly in the file at Entry.Off.
	Data
	// Partial blocks have storage at Entry.Off, but only the sectors
	// their sector bitmap marks are in the file; the others read from
	// the parent.
	Partial
)

// Entry is one block's table entry, decoded.
type Entry struct {
	State State
	// Off is the file offset of the block's first byte (Data, Partial).
	Off int64
}

// Has reports whether the block has storage in the file.
func (e Entry) Has() bool { return e.State == Data || e.State == Partial }

// Placement is where Codec.Place puts a new block.
type Placement struct {
	// Entry is the block's new entry (Data or Partial).
	Entry Entry
	// End is the new end of what is allocated.
	End int64
	// Meta, when set, is written at MetaOff by the next Flush, before
	// the table entry (VHD's all-ones sector bitmap of a dynamic disk).
	Meta    []byte
	MetaOff int64
}

// Codec is what a format tells the Map about its table and its blocks.
// Every method is called with the Map's mutex held.
type Codec interface {
	// Get decodes block blk's entry from the table.
	Get(table []byte, blk int64) Entry
	// Put encodes e as block blk's entry into the table and returns the
	// offset in the table of the bytes it changed.
	Put(table []byte, blk int64, e Entry) int64
	// Place gives block blk storage at or after end, the first byte past
	// every allocated block and the metadata, or fails (a table that
	// cannot address more: wrap blockdev.ErrNoSpace). Everything from end
	// to the new end reads as zeroes until written.
	Place(blk, end int64) (Placement, error)
	// Commit writes the format's own metadata after allocations (end is
	// the new end): called by Flush after the data and the bitmaps are
	// durable and before the table is written.
	Commit(end int64) error
}

// Bitmapper is a Codec with Partial blocks: it says where a block's
// sector bitmap lies in the file. Config.BitmapSize bytes are read there.
type Bitmapper interface {
	BitmapAt(blk int64, e Entry) (int64, error)
}

// Locator is a Codec whose table is not one run of the file: TableAt
// returns the file offsets (one, or a redundant copy too) of the table's
// unit u, which Place has placed. (vmdk's grain tables; see the package
// comment.)
type Locator interface {
	TableAt(u int64) ([]int64, error)
}

// Span is a range of the file [Start, End).
type Span struct{ Start, End int64 }

// Config describes an image to New. The format has checked every field
// it read from the file: the Map trusts the sizes and checks the entries.
type Config struct {
	// Name prefixes messages ("vhd").
	Name string
	// File is the image's file; the Map owns it once New succeeds.
	File image.File
	// Size is the virtual disk size; BlockSize the bytes of one block.
	Size, BlockSize int64
	// Table holds the on-disk table, at TableOff in the file, written
	// back in units of Unit bytes (512 when zero). TableName names it in
	// messages ("BAT").
	Table     []byte
	TableOff  int64
	Unit      int64
	TableName string
	// Codec decodes and places entries.
	Codec Codec
	// Lead is the bytes of per-block metadata just before a block's data
	// (VHD's sector bitmap), part of the block's span in the file.
	Lead int64
	// Reserved are the file ranges of the format's metadata: no block
	// may overlap them, and allocation starts after the last.
	Reserved []Span
	// End, when larger than every block and reserved span, is where
	// allocation starts.
	End int64
	// BitmapSize is the bytes of a Partial block's sector bitmap;
	// SectorSize the bytes one bit stands for (512 when zero); LSBFirst
	// numbers bits from the low bit of each byte (else from the high).
	BitmapSize, SectorSize int64
	LSBFirst               bool
	// Parent is the layer below (nil: none, or opened without it).
	// Layered says the image is a layer over a parent even when Parent
	// is nil: unallocated ranges are not known to read as zeroes, so
	// zeroes are written, and Data blocks are copied up.
	Parent  blockdev.Device
	Layered bool
	// ReadOnly refuses writes.
	ReadOnly bool
	// Blocks is the number of entries the table holds (at least the
	// blocks of Size).
	Blocks int64
}

// MaxTable is the largest table a Map holds in memory (8 Mi entries of 4
// bytes: 16 TiB in 2 MiB blocks). Formats refuse a larger one, naming
// the header field, before they read it.
const MaxTable = 32 << 20

// Bounds of one Extents call: the extents it returns and the blocks it
// looks at; of the clean sector bitmaps kept in memory.
const (
	maxExtents      = 4096
	maxExtentBlocks = 1 << 16
	maxBitmaps      = 4096
)

// Map is an open block-mapped image. See the package comment.
type Map struct {
	c      Config
	f      image.File
	parent blockdev.Device
	ss     int64

	mu      sync.Mutex
	closed  bool
	table   []byte
	dirty   map[int64]bool // table units to write
	bitmaps map[int64]*bitmap
	meta    []Placement // bytes to write with new blocks
	end     int64
	grown   bool // allocations since the last Commit
}

type bitmap struct {
	off   int64
	b     []byte
	dirty bool
}

var (
	_ blockdev.Device     = (*Map)(nil)
	_ blockdev.Trimmer    = (*Map)(nil)
	_ blockdev.ZeroWriter = (*Map)(nil)
	_ blockdev.Extenter   = (*Map)(nil)
	_ blockdev.Describer  = (*Map)(nil)
)

// corruptf returns an error of the Map's format wrapping
// blockdev.ErrCorrupt.
func (m *Map) corruptf(format string, a ...any) error {
	return fmt.Errorf("%s: "+format+": %w", append(append([]any{m.c.Name}, a...), blockdev.ErrCorrupt)...)
}

// New checks every entry of the table (each block inside the file, clear
// of Reserved and of every other block) and returns the Map. On error the
// caller keeps the File (and the Parent).
func New(c Config) (*Map, error) {
	if c.Unit == 0 {
		c.Unit = 512
	}
	if c.SectorSize == 0 {
		c.SectorSize = 512
	}
	if c.TableName == "" {
		c.TableName = "table"
	}
	if len(c.Table) > MaxTable {
		return nil, fmt.Errorf("%s: %s of %d bytes is larger than the %d vdisk holds: %w", c.Name, c.TableName, len(c.Table), MaxTable, image.ErrUnsupported)
	}
	if c.BlockSize <= 0 || c.Size < 0 || c.Blocks < (c.Size+c.BlockSize-1)/c.BlockSize {
		return nil, fmt.Errorf("%s: %d blocks of %d bytes do not hold a disk of %d bytes: %w", c.Name, c.Blocks, c.BlockSize, c.Size, blockdev.ErrCorrupt)
	}
	m := &Map{c: c, f: c.File, parent: c.Parent, ss: c.SectorSize, table: c.Table,
		dirty: map[int64]bool{}, bitmaps: map[int64]*bitmap{}}
	end, err := m.check()
	if err != nil {
		return nil, err
	}
	m.end = max(end, c.End)
	return m, nil
}

// check verifies the entries and returns the end of the last block or
// reserved span. It holds 8 bytes per allocated block.
func (m *Map) check() (int64, error) {
	fsize, err := m.f.Size()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", m.c.Name, err)
	}
	var end int64
	for _, r := range m.c.Reserved {
		end = max(end, r.End)
	}
	// The last block of the disk needs storage only for what is in it.
	bs := m.c.BlockSize
	lastBlk, lastOff := (m.c.Size-1)/bs, int64(-1)
	tail := m.c.Size - lastBlk*bs
	var starts []int64
	for blk := range m.c.Blocks {
		e := m.c.Codec.Get(m.table, blk)
		if !e.Has() {
			continue
		}
		need := bs
		if blk == lastBlk {
			need, lastOff = tail, e.Off
		}
		if e.Off-m.c.Lead < 0 || e.Off > fsize-need {
			return 0, m.corruptf("%s entry %d: block at %#x past the end of the file of %d bytes: truncated", m.c.TableName, blk, e.Off, fsize)
		}
		for _, r := range m.c.Reserved {
			if e.Off-m.c.Lead < r.End && r.Start < e.Off+need {
				return 0, m.corruptf("%s entry %d: block at %#x overlaps the image metadata at %#x", m.c.TableName, blk, e.Off, r.Start)
			}
		}
		starts = append(starts, e.Off)
		end = max(end, e.Off+need)
	}
	slices.Sort(starts)
	for i := 1; i < len(starts); i++ {
		need := bs
		if starts[i-1] == lastOff {
			need = tail
		}
		if starts[i]-m.c.Lead < starts[i-1]+need {
			return 0, m.shared(starts[i-1], starts[i])
		}
	}
	return end, nil
}

// shared names two blocks whose storage overlaps, at a and b.
func (m *Map) shared(a, b int64) error {
	var blks []int64
	for blk := range m.c.Blocks {
		if e := m.c.Codec.Get(m.table, blk); e.Has() && (e.Off == a || e.Off == b) && len(blks) < 2 {
			blks = append(blks, blk)
		}
	}
	blks = append(blks, -1, -1)
	return m.corruptf("%s entries %d and %d share the block at %#x", m.c.TableName, blks[0], blks[1], b)
}

// Size returns the virtual disk size.
func (m *Map) Size() int64 { return m.c.Size }

// BlockSize returns the size of the image's blocks.
func (m *Map) BlockSize() int64 { return m.c.BlockSize }

// Parent returns the layer below, nil without one.
func (m *Map) Parent() blockdev.Device { return m.parent }

// File returns the image's file.
func (m *Map) File() image.File { return m.f }

// End returns the end of what is allocated.
func (m *Map) End() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.end
}

// Lookup returns block blk's entry.
func (m *Map) Lookup(blk int64) Entry {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.c.Codec.Get(m.table, blk)
}

// AllocatedBlocks counts the blocks with storage.
func (m *Map) AllocatedBlocks() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	var n int64
	for blk := range m.c.Blocks {
		if m.c.Codec.Get(m.table, blk).Has() {
			n++
		}
	}
	return n
}

// Info reports block sizes and whether the image is read-only.
func (m *Map) Info() blockdev.Info {
	return blockdev.Info{LogicalBlockSize: 512, PhysicalBlockSize: 4096, ReadOnly: m.c.ReadOnly}
}

// guard refuses calls after Close and ranges outside the disk.
func (m *Map) guard(off, n int64, write bool) error {
	m.mu.Lock()
	closed := m.closed
	m.mu.Unlock()
	if closed {
		return blockdev.ErrClosed
	}
	if err := blockdev.CheckRange(off, n, m.c.Size); err != nil {
		return err
	}
	if write && m.c.ReadOnly {
		return blockdev.ErrReadOnly
	}
	return nil
}

// each calls fn for every piece of [off, off+n) inside one block, in
// order, and returns how many bytes from off the pieces that succeeded
// cover.
func (m *Map) each(off, n int64, fn func(blk, pos, c int64) error) (int64, error) {
	bs := m.c.BlockSize
	for pos, end := off, off+n; pos < end; {
		blk := pos / bs
		c := min(end-pos, (blk+1)*bs-pos)
		if err := fn(blk, pos, c); err != nil {
			return pos - off, err
		}
		pos += c
	}
	return n, nil
}

// ReadAt reads len(p) bytes at off (see the package comment for n on
// error).
func (m *Map) ReadAt(p []byte, off int64) (int, error) { return m.rw(p, off, false) }

// WriteAt writes len(p) bytes at off, allocating blocks as needed (see
// the package comment for n on error).
func (m *Map) WriteAt(p []byte, off int64) (int, error) { return m.rw(p, off, true) }

// rw serves ReadAt and WriteAt block by block.
func (m *Map) rw(p []byte, off int64, write bool) (int, error) {
	if err := m.guard(off, int64(len(p)), write); err != nil {
		return 0, err
	}
	n, err := m.each(off, int64(len(p)), func(blk, pos, c int64) error {
		if write {
			return m.write(p[pos-off:pos-off+c], blk, pos)
		}
		return m.read(p[pos-off:pos-off+c], blk, pos)
	})
	return int(n), err
}

// read fills b from guest offset pos inside block blk.
func (m *Map) read(b []byte, blk, pos int64) error {
	m.mu.Lock()
	e := m.c.Codec.Get(m.table, blk)
	var rs []run
	var err error
	if e.State == Partial {
		rs, err = m.runs(blk, e, pos, int64(len(b)))
	}
	m.mu.Unlock()
	in := pos - blk*m.c.BlockSize
	switch e.State {
	case Data:
		return m.readFile(b, e.Off+in)
	case Zero:
		clear(b)
		return nil
	case Unallocated:
		return m.readParent(b, pos)
	}
	if err != nil {
		return err
	}
	for _, r := range rs {
		part := b[r.pos-pos : r.pos-pos+r.n]
		if r.in {
			err = m.readFile(part, e.Off+r.pos-blk*m.c.BlockSize)
		} else {
			err = m.readParent(part, r.pos)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// readFile reads b at file offset off.
func (m *Map) readFile(b []byte, off int64) error {
	if _, err := m.f.ReadAt(b, off); err != nil {
		return fmt.Errorf("%s: read data at %#x: %w", m.c.Name, off, err)
	}
	return nil
}

// readParent fills b with the parent's bytes at guest offset off.
func (m *Map) readParent(b []byte, off int64) error {
	if err := image.ReadParent(m.parent, b, off); err != nil {
		return fmt.Errorf("%s: %w", m.c.Name, err)
	}
	return nil
}

// run is a piece of a Partial block whose sectors are all in the file, or
// all not.
type run struct {
	pos, n int64
	in     bool
}

// runs splits [pos, pos+n) of Partial block blk by its sector bitmap.
// Called with mu held.
func (m *Map) runs(blk int64, e Entry, pos, n int64) ([]run, error) {
	bm, err := m.bitmap(blk, e)
	if err != nil {
		return nil, err
	}
	base := blk * m.c.BlockSize
	var out []run
	for end := pos + n; pos < end; {
		s := (pos - base) / m.ss
		in := m.has(bm, s)
		stop := min(end, base+(s+1)*m.ss)
		for stop < end && m.has(bm, (stop-base)/m.ss) == in {
			stop = min(end, stop+m.ss)
		}
		out = append(out, run{pos, stop - pos, in})
		pos = stop
	}
	return out, nil
}

// bit returns the byte index and mask of sector s's bit.
func (m *Map) bit(s int64) (int64, byte) {
	if m.c.LSBFirst {
		return s / 8, 1 << (s % 8)
	}
	return s / 8, 0x80 >> (s % 8)
}

func (m *Map) has(bm *bitmap, s int64) bool {
	i, mask := m.bit(s)
	return bm.b[i]&mask != 0
}

// bitmap returns the sector bitmap of Partial block blk, reading it when
// it is not in memory. Called with mu held.
func (m *Map) bitmap(blk int64, e Entry) (*bitmap, error) {
	if bm, ok := m.bitmaps[blk]; ok {
		return bm, nil
	}
	bmr, ok := m.c.Codec.(Bitmapper)
	if !ok || m.c.BitmapSize <= 0 || m.c.BitmapSize*8*m.ss < m.c.BlockSize {
		return nil, m.corruptf("block %d is partially present, but the format has no sector bitmaps", blk)
	}
	off, err := bmr.BitmapAt(blk, e)
	if err != nil {
		return nil, err
	}
	m.evict()
	bm := &bitmap{off: off, b: make([]byte, m.c.BitmapSize)}
	if _, err := m.f.ReadAt(bm.b, off); err != nil {
		return nil, fmt.Errorf("%s: read sector bitmap of block %d: %w", m.c.Name, blk, err)
	}
	m.bitmaps[blk] = bm
	return bm, nil
}

// evict drops the clean bitmaps when there are too many. Called with mu
// held.
func (m *Map) evict() {
	if len(m.bitmaps) < maxBitmaps {
		return
	}
	for k, v := range m.bitmaps {
		if !v.dirty {
			delete(m.bitmaps, k)
		}
	}
}

// write stores b at guest offset pos inside block blk.
func (m *Map) write(b []byte, blk, pos int64) error {
	in := pos - blk*m.c.BlockSize
	m.mu.Lock()
	e := m.c.Codec.Get(m.table, blk)
	if e.State == Data {
		m.mu.Unlock()
		return m.writeFile(b, e.Off+in)
	}
	defer m.mu.Unlock()
	if !e.Has() {
		copyUp := e.State == Unallocated && m.parent != nil
		var err error
		if e, err = m.allocate(blk); err != nil {
			return err
		}
		if e.State == Data && copyUp {
			return m.copyUp(b, blk, e, in)
		}
	}
	if e.State == Data {
		return m.writeFile(b, e.Off+in)
	}
	return m.writePartial(b, blk, e, pos)
}

// copyUp writes b at in inside the new Data block blk and fills the rest
// of the block from the parent. Called with mu held.
func (m *Map) copyUp(b []byte, blk int64, e Entry, in int64) error {
	bs, base := m.c.BlockSize, blk*m.c.BlockSize
	for _, r := range []Span{{0, in}, {in + int64(len(b)), bs}} {
		for o := r.Start; o < r.End; {
			c := min(r.End-o, 1<<20)
			buf := make([]byte, c)
			if err := m.readParent(buf, base+o); err != nil {
				return err
			}
			if !blockdev.IsZero(buf) {
				if err := m.writeFile(buf, e.Off+o); err != nil {
					return err
				}
			}
			o += c
		}
	}
	return m.writeFile(b, e.Off+in)
}

// writePartial stores b at guest offset pos inside Partial block blk:
// sectors in the file are written as they are; the others get whole
// sectors, their edges filled from the parent, and then their bits.
// Called with mu held.
func (m *Map) writePartial(b []byte, blk int64, e Entry, pos int64) error {
	rs, err := m.runs(blk, e, pos, int64(len(b)))
	if err != nil {
		return err
	}
	base := blk * m.c.BlockSize
	bm := m.bitmaps[blk]
	for _, r := range rs {
		part := b[r.pos-pos : r.pos-pos+r.n]
		if r.in {
			if err := m.writeFile(part, e.Off+r.pos-base); err != nil {
				return err
			}
			continue
		}
		lo := base + (r.pos-base)/m.ss*m.ss
		hi := base + (r.pos+r.n-base+m.ss-1)/m.ss*m.ss
		buf := make([]byte, hi-lo)
		if lo < r.pos {
			if err := m.readParent(buf[:m.ss], lo); err != nil {
				return err
			}
		}
		if hi > r.pos+r.n {
			if err := m.readParent(buf[hi-lo-m.ss:], hi-m.ss); err != nil {
				return err
			}
		}
		copy(buf[r.pos-lo:], part)
		if err := m.writeFile(buf, e.Off+lo-base); err != nil {
			return err
		}
		for x := lo; x < hi; x += m.ss {
			i, mask := m.bit((x - base) / m.ss)
			bm.b[i] |= mask
		}
		bm.dirty = true
	}
	return nil
}

// writeFile writes b at file offset off.
func (m *Map) writeFile(b []byte, off int64) error {
	if _, err := m.f.WriteAt(b, off); err != nil {
		return fmt.Errorf("%s: write data at %#x: %w", m.c.Name, off, noSpace(err))
	}
	return nil
}

// noSpace marks a full file system as blockdev.ErrNoSpace.
func noSpace(err error) error {
	if !errors.Is(err, blockdev.ErrNoSpace) && (errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) || errors.Is(err, syscall.EFBIG)) {
		return fmt.Errorf("%w: %w", blockdev.ErrNoSpace, err)
	}
	return err
}

// allocate gives block blk storage at the end of the file, reading as
// zeroes, and records its entry (and, for a Partial block, an empty sector
// bitmap); they reach the file at the next Flush. Called with mu held.
func (m *Map) allocate(blk int64) (Entry, error) {
	pl, err := m.c.Codec.Place(blk, m.end)
	if err != nil {
		return Entry{}, err
	}
	e := pl.Entry
	// Whatever lies past the end (a crash's leftovers, the old footer) is
	// cut, and the new space is extended as zeroes.
	for _, n := range []int64{m.end, max(pl.End, e.Off+m.c.BlockSize)} {
		if err := m.f.Truncate(n); err != nil {
			return Entry{}, fmt.Errorf("%s: allocate block %d: %w", m.c.Name, blk, noSpace(err))
		}
	}
	if e.State == Partial {
		bmr, ok := m.c.Codec.(Bitmapper)
		if !ok {
			return Entry{}, fmt.Errorf("%s: a partial block without a sector bitmap", m.c.Name)
		}
		off, err := bmr.BitmapAt(blk, e)
		if err != nil {
			return Entry{}, err
		}
		m.evict()
		m.bitmaps[blk] = &bitmap{off: off, b: make([]byte, m.c.BitmapSize), dirty: true}
	}
	if pl.Meta != nil {
		m.meta = append(m.meta, pl)
	}
	m.put(blk, e)
	m.end, m.grown = pl.End, true
	return e, nil
}

// put records block blk's entry and marks its table unit. Called with mu
// held.
func (m *Map) put(blk int64, e Entry) {
	m.dirty[m.c.Codec.Put(m.table, blk, e)/m.c.Unit] = true
}

// Flush makes every completed write durable: the data first, then the
// bitmaps, the bytes placed with new blocks and the format's metadata,
// then the table units that reach them.
func (m *Map) Flush() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return blockdev.ErrClosed
	}
	if m.c.ReadOnly {
		return nil
	}
	if err := m.sync(); err != nil {
		return err
	}
	wrote := false
	for blk, bm := range m.bitmaps {
		if !bm.dirty {
			continue
		}
		if _, err := m.f.WriteAt(bm.b, bm.off); err != nil {
			return fmt.Errorf("%s: write sector bitmap of block %d: %w", m.c.Name, blk, noSpace(err))
		}
		bm.dirty, wrote = false, true
	}
	for _, pl := range m.meta {
		if _, err := m.f.WriteAt(pl.Meta, pl.MetaOff); err != nil {
			return fmt.Errorf("%s: write block metadata at %#x: %w", m.c.Name, pl.MetaOff, noSpace(err))
		}
		wrote = true
	}
	m.meta = nil
	if m.grown {
		if err := m.c.Codec.Commit(m.end); err != nil {
			return err
		}
		m.grown, wrote = false, true
	}
	if wrote {
		if err := m.sync(); err != nil {
			return err
		}
	}
	if len(m.dirty) == 0 {
		return nil
	}
	for _, u := range slices.Sorted(maps.Keys(m.dirty)) {
		if err := m.writeUnit(u); err != nil {
			return err
		}
		delete(m.dirty, u)
	}
	return m.sync()
}

// writeUnit writes table unit u where it lives. Called with mu held.
func (m *Map) writeUnit(u int64) error {
	lo := u * m.c.Unit
	b := m.table[lo:min(lo+m.c.Unit, int64(len(m.table)))]
	offs := []int64{m.c.TableOff + lo}
	if l, ok := m.c.Codec.(Locator); ok {
		var err error
		if offs, err = l.TableAt(u); err != nil {
			return err
		}
	}
	for _, off := range offs {
		if _, err := m.f.WriteAt(b, off); err != nil {
			return fmt.Errorf("%s: write %s at %#x: %w", m.c.Name, m.c.TableName, off, noSpace(err))
		}
	}
	return nil
}

// sync makes every write to the file durable.
func (m *Map) sync() error {
	if err := m.f.Sync(); err != nil {
		return fmt.Errorf("%s: sync: %w", m.c.Name, err)
	}
	return nil
}

// Trim makes [off, off+n) read as zeroes, releasing the storage of the
// allocated part (see WriteZeroes).
func (m *Map) Trim(off, n int64) error { return m.WriteZeroes(off, n, true) }

// WriteZeroes makes [off, off+n) read as zeroes. In a Data block the
// file range is punched (mayTrim) or zeroed in place; blocks stay
// allocated, so the table never changes here. Unallocated and Zero
// blocks of an image that is no layer already read as zeroes; in a
// layered image zeroes are written over what would show the parent.
func (m *Map) WriteZeroes(off, n int64, mayTrim bool) error {
	if err := m.guard(off, n, true); err != nil {
		return err
	}
	_, err := m.each(off, n, func(blk, pos, c int64) error {
		m.mu.Lock()
		e := m.c.Codec.Get(m.table, blk)
		m.mu.Unlock()
		switch {
		case e.State == Data:
			return m.zeroFile(e.Off+pos-blk*m.c.BlockSize, c, mayTrim)
		case e.State == Zero || e.State == Unallocated && !m.c.Layered:
			return nil
		}
		zero := make([]byte, min(c, 1<<20))
		for end := pos + c; pos < end; {
			k := min(end-pos, int64(len(zero)))
			if err := m.write(zero[:k], blk, pos); err != nil {
				return err
			}
			pos += k
		}
		return nil
	})
	return err
}

// osFile is a File that is a local file (image.LocalFile).
type osFile interface{ OS() *os.File }

// zeroFile makes n bytes of the file at off read as zeroes.
func (m *Map) zeroFile(off, n int64, mayTrim bool) error {
	var err error
	switch o, ok := m.f.(osFile); {
	case ok:
		err = blockdev.ZeroFileRange(o.OS(), off, n, mayTrim)
	case mayTrim:
		err = image.Punch(m.f, off, n)
	default:
		err = image.Punch(struct{ image.File }{m.f}, off, n) // writes zeroes
	}
	if err != nil {
		return fmt.Errorf("%s: zero at %#x: %w", m.c.Name, off, noSpace(err))
	}
	return nil
}

// Extents describes [off, off+n): Data blocks are data but for the holes
// of a local file inside them, Partial blocks data; Zero blocks, and
// Unallocated ones without a parent, holes that read as zeroes;
// Unallocated blocks with a parent have the parent's extents, marked as
// holes of this image.
func (m *Map) Extents(off, n int64) ([]blockdev.Extent, error) {
	if err := m.guard(off, n, false); err != nil {
		return nil, err
	}
	var out []blockdev.Extent
	add := func(o, l int64, f blockdev.ExtentFlags) { out = blockdev.AppendExtent(out, o, l, f) }
	errStop := errors.New("enough")
	seen := 0
	_, err := m.each(off, n, func(blk, pos, c int64) error {
		if len(out) >= maxExtents || seen >= maxExtentBlocks {
			return errStop
		}
		seen++
		m.mu.Lock()
		e := m.c.Codec.Get(m.table, blk)
		m.mu.Unlock()
		switch e.State {
		case Data:
			if o, ok := m.f.(osFile); ok {
				blockdev.FileExtents(o.OS(), e.Off+pos-blk*m.c.BlockSize, c, pos, add)
			} else {
				add(pos, c, 0)
			}
		case Partial:
			add(pos, c, 0)
		case Zero:
			add(pos, c, blockdev.ExtentHole|blockdev.ExtentZero)
		default:
			return m.parentExtents(pos, c, add)
		}
		return nil
	})
	if err != nil && err != errStop {
		return nil, err
	}
	return out, nil
}

// parentExtents adds the parent's extents of [off, off+n), marked as
// holes of this image, and holes that read as zeroes past its end.
func (m *Map) parentExtents(off, n int64, add func(o, l int64, f blockdev.ExtentFlags)) error {
	end := off + n
	if m.parent != nil {
		for pend := min(end, m.parent.Size()); off < pend; {
			ext, err := blockdev.Extents(m.parent, off, pend-off)
			if err != nil {
				return err
			}
			for _, e := range ext {
				add(e.Off, e.Len, e.Flags|blockdev.ExtentHole)
				off = e.Off + e.Len
			}
		}
	}
	if off < end {
		add(off, end-off, blockdev.ExtentHole|blockdev.ExtentZero)
	}
	return nil
}

// Close flushes every change and releases the file and the parent.
func (m *Map) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return blockdev.ErrClosed
	}
	m.mu.Unlock()
	var err error
	if !m.c.ReadOnly {
		err = m.Flush()
	}
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	if m.parent != nil {
		m.parent.Close()
	}
	if cerr := m.f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("%s: close: %w", m.c.Name, cerr)
	}
	return err
}
