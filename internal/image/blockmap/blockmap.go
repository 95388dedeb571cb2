package blockmap

import (
	"cmp"
	"fmt"
	"slices"
	"sync"

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
	// Also are the offsets in the table of further entries Place
	// changed (vhdx's sector bitmap entry of a new bitmap block): their
	// units are written with the block's entry.
	Also []int64
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

// Loader is the Codec of a Lazy Map: Load fills b with table unit u
// (zeroes when the unit lies nowhere yet) and checks its entries against
// end, the end of what is allocated.
type Loader interface {
	Load(u int64, b []byte, end int64) error
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
	// BeforeWrite, when set, is called before each write, zeroing or
	// trim is served (after its range is checked): vhdx gives its headers
	// new write GUIDs before the first change.
	BeforeWrite func() error
	// Blocks is the number of entries the table holds (at least the
	// blocks of Size).
	Blocks int64
	// Lazy Maps hold no Table: the units are loaded when first needed
	// through the Codec's Loader (which checks their entries; New checks
	// none) and the clean ones dropped when there are too many. Codec.Get
	// and Put then see one unit and the entry's index in it; EntrySize is
	// the bytes of an entry. (vmdk's grain tables: see the package
	// comment.)
	Lazy      bool
	EntrySize int64
	// ParentOff is where this Map's byte 0 lies in the parent (a vmdk
	// extent's start).
	ParentOff int64
	// Borrowed: Close leaves the File and the Parent open (their owner
	// closes them).
	Borrowed bool
	// Status says how LayerStatus reports the blocks (qemu's block
	// status of the format).
	Status StatusRules
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
	maxUnits        = 4096
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
	units   map[int64][]byte // the loaded units of a Lazy Map
	dirty   map[int64]bool   // table units to write
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
	if _, ok := c.Codec.(Loader); c.Lazy && (!ok || c.EntrySize <= 0 || c.Unit%c.EntrySize != 0) {
		return nil, fmt.Errorf("%s: a lazy table needs a Loader and units of whole entries", c.Name)
	}
	m := &Map{c: c, f: c.File, parent: c.Parent, ss: c.SectorSize, table: c.Table,
		units: map[int64][]byte{}, dirty: map[int64]bool{}, bitmaps: map[int64]*bitmap{}}
	end, err := m.check()
	if err != nil {
		return nil, err
	}
	m.end = max(end, c.End)
	return m, nil
}

// check verifies the entries and returns the end of the last block or
// reserved span. It holds 8 bytes per allocated block; the reserved spans
// may be many (vhdx's sector bitmap blocks): blocks and spans are both
// sorted and walked once.
func (m *Map) check() (int64, error) {
	fsize, err := m.f.Size()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", m.c.Name, err)
	}
	res := slices.Clone(m.c.Reserved)
	slices.SortFunc(res, func(a, b Span) int { return cmp.Compare(a.Start, b.Start) })
	var end int64
	for _, r := range res {
		end = max(end, r.End)
	}
	// The last block of the disk needs storage only for what is in it.
	bs := m.c.BlockSize
	lastBlk, lastOff := (m.c.Size-1)/bs, int64(-1)
	tail := m.c.Size - lastBlk*bs
	var starts []int64
	for blk := range m.c.Blocks {
		if m.c.Lazy {
			break
		}
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
		starts = append(starts, e.Off)
	}
	slices.Sort(starts)
	needAt := func(off int64) int64 {
		if off == lastOff {
			return tail
		}
		return bs
	}
	// resEnd is the largest end of the reserved spans res[:j], those that
	// start at or before the block's span; res[j] is the next one.
	j, resEnd, resAt := 0, int64(-1), int64(0)
	for i, off := range starts {
		lo, hi := off-m.c.Lead, off+needAt(off)
		for ; j < len(res) && res[j].Start <= lo; j++ {
			if res[j].End > resEnd {
				resEnd, resAt = res[j].End, res[j].Start
			}
		}
		at, hit := resAt, lo < resEnd
		if !hit && j < len(res) && res[j].Start < hi {
			at, hit = res[j].Start, true
		}
		if hit {
			return 0, m.corruptf("%s entry %d: block at %#x overlaps the image metadata at %#x", m.c.TableName, m.blockAt(off), off, at)
		}
		if i > 0 && lo < starts[i-1]+needAt(starts[i-1]) {
			return 0, m.shared(starts[i-1], off)
		}
		end = max(end, hi)
	}
	return end, nil
}

// blockAt returns the first block whose storage starts at off, for
// messages.
func (m *Map) blockAt(off int64) int64 {
	for blk := range m.c.Blocks {
		if e := m.c.Codec.Get(m.table, blk); e.Has() && e.Off == off {
			return blk
		}
	}
	return -1
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
func (m *Map) Lookup(blk int64) (Entry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.entry(blk)
}

// entry returns block blk's entry, loading its unit of a Lazy Map.
// Called with mu held.
func (m *Map) entry(blk int64) (Entry, error) {
	if !m.c.Lazy {
		return m.c.Codec.Get(m.table, blk), nil
	}
	t, i, err := m.unit(blk)
	if err != nil {
		return Entry{}, err
	}
	return m.c.Codec.Get(t, i), nil
}

// unit returns the unit of a Lazy Map that holds block blk's entry, and
// the entry's index in it, loading it (and dropping the clean units when
// there are too many). Called with mu held.
func (m *Map) unit(blk int64) ([]byte, int64, error) {
	per := m.c.Unit / m.c.EntrySize
	u := blk / per
	t, ok := m.units[u]
	if !ok {
		if len(m.units) >= maxUnits {
			for k := range m.units {
				if !m.dirty[k] {
					delete(m.units, k)
				}
			}
		}
		t = make([]byte, m.c.Unit)
		if err := m.c.Codec.(Loader).Load(u, t, m.end); err != nil {
			return nil, 0, err
		}
		m.units[u] = t
	}
	return t, blk - u*per, nil
}

// AllocatedBlocks counts the blocks with storage (0 for a Lazy Map,
// whose units are walked with Lookup).
func (m *Map) AllocatedBlocks() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	var n int64
	for blk := range m.c.Blocks {
		if m.c.Lazy {
			break
		}
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
