package blockmap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/blockdev/blockdevtest"
	"vdisk/internal/image"
	"vdisk/internal/image/imagetest"
)

// The toy format the tests put on the core: a 512-byte header, then a
// table of little-endian uint32 entries from byte 512 (0 unallocated, 1
// zero, else the data's sector, with the top bit for a partial block),
// then blocks, each a partial block's sector bitmap (lead) and its data.
const (
	toyTable   = 512
	partialBit = 1 << 31
)

type toy struct {
	f       image.File
	bs      int64
	lead    int64
	partial bool
	commits int
}

func (c *toy) Get(t []byte, blk int64) Entry {
	switch v := binary.LittleEndian.Uint32(t[4*blk:]); v {
	case 0:
		return Entry{}
	case 1:
		return Entry{State: Zero}
	default:
		st := Data
		if v&partialBit != 0 {
			st = Partial
		}
		return Entry{State: st, Off: int64(v&^partialBit) * 512}
	}
}

func (c *toy) Put(t []byte, blk int64, e Entry) int64 {
	v := uint32(e.Off / 512)
	switch e.State {
	case Unallocated:
		v = 0
	case Zero:
		v = 1
	case Partial:
		v |= partialBit
	}
	binary.LittleEndian.PutUint32(t[4*blk:], v)
	return 4 * blk
}

func (c *toy) Place(blk, end int64) (Placement, error) {
	pl := Placement{Entry: Entry{State: Data, Off: end + c.lead}, End: end + c.lead + c.bs}
	if c.partial {
		pl.Entry.State = Partial
	}
	return pl, nil
}

func (c *toy) BitmapAt(blk int64, e Entry) (int64, error) { return e.Off - c.lead, nil }

// Load reads unit u of the table (a Lazy toy).
func (c *toy) Load(u int64, b []byte, end int64) error {
	_, err := c.f.ReadAt(b, toyTable+u*int64(len(b)))
	return err
}

func (c *toy) Commit(end int64) error {
	c.commits++
	_, err := c.f.WriteAt([]byte("toy!"), 0)
	return err
}

// toyOpts describe a toy image.
type toyOpts struct {
	size, bs int64
	partial  bool
	parent   blockdev.Device
	layered  bool
	readOnly bool
	lazy     bool
	rules    StatusRules
}

func (o toyOpts) blocks() int64 { return (o.size + o.bs - 1) / o.bs }

func (o toyOpts) dataStart() int64 { return toyTable + (4*o.blocks()+511)&^511 }

// memFile returns an empty in-memory File.
func memFile() image.File { return image.NewBackendFile(imagetest.NewMemBackend(256 << 20)) }

// openToy opens the toy image in f, writing an empty one first when f is
// empty.
func openToy(t testing.TB, f image.File, o toyOpts) (*Map, *toy) {
	t.Helper()
	if n, _ := f.Size(); n == 0 {
		if err := f.Truncate(o.dataStart()); err != nil {
			t.Fatal(err)
		}
	}
	table := make([]byte, 4*o.blocks())
	if _, err := f.ReadAt(table, toyTable); err != nil {
		t.Fatal(err)
	}
	c := &toy{f: f, bs: o.bs, partial: o.partial}
	cfg := Config{Name: "toy", File: f, Size: o.size, BlockSize: o.bs, Blocks: o.blocks(),
		Table: table, TableOff: toyTable, TableName: "toy table", Codec: c,
		Reserved: []Span{{0, o.dataStart()}}, Parent: o.parent, Layered: o.layered || o.parent != nil, ReadOnly: o.readOnly, Status: o.rules}
	if o.lazy {
		cfg.Table, cfg.Lazy, cfg.EntrySize = nil, true, 4
	}
	if o.partial {
		c.lead = (o.bs/512/8 + 511) &^ 511
		cfg.Lead, cfg.BitmapSize = c.lead, c.lead
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return m, c
}

// parentDev returns a memory device of size bytes with a pattern.
func parentDev(size int64) (blockdev.Device, []byte) {
	ref := make([]byte, size)
	for i := range ref {
		ref[i] = byte(i*7 + i/4096)
	}
	m := blockdev.NewMem(size)
	m.WriteAt(ref, 0)
	return m, ref
}

// TestConformance runs the blockdev suite on toy images: plain, read-only,
// layered over a parent with copy-up of Data blocks, and with Partial
// blocks.
func TestConformance(t *testing.T) {
	for _, tc := range []struct {
		name     string
		bs       int64
		partial  bool
		parent   bool
		readOnly bool
		lazy     bool
	}{
		{"plain", 64 << 10, false, false, false, false},
		{"read-only", 64 << 10, false, false, true, false},
		{"copy-up", 64 << 10, false, true, false, false},
		{"partial", 32 << 10, true, true, false, false},
		{"partial-no-parent", 4 << 10, true, false, false, false},
		{"lazy", 4 << 10, false, false, false, true},
		{"lazy-copy-up", 4 << 10, false, true, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			blockdevtest.Run(t, func(t *testing.T, size int64) blockdev.Device {
				o := toyOpts{size: size, bs: tc.bs, partial: tc.partial, readOnly: tc.readOnly, layered: tc.partial, lazy: tc.lazy}
				if tc.parent {
					o.parent, _ = parentDev(size - 5000) // shorter: its end reads as zeroes
				}
				m, _ := openToy(t, memFile(), o)
				return m
			})
		})
	}
}

// TestLayers reads through unallocated, copied-up and partial blocks and
// checks the layer survives a reopen from the file alone.
func TestLayers(t *testing.T) {
	const size = 1 << 20
	for _, partial := range []bool{false, true} {
		t.Run(fmt.Sprint("partial=", partial), func(t *testing.T) {
			parent, ref := parentDev(size)
			f := memFile()
			o := toyOpts{size: size, bs: 64 << 10, partial: partial, parent: parent}
			m, _ := openToy(t, f, o)
			imagetest.MustEqual(t, "fresh", imagetest.ReadAll(t, m), ref)
			imagetest.RandomWrites(t, m, ref, 3, 30, 100<<10)
			if err := m.WriteZeroes(200<<10, 100<<10+3, false); err != nil {
				t.Fatal(err)
			}
			clear(ref[200<<10 : 300<<10+3])
			imagetest.MustEqual(t, "written", imagetest.ReadAll(t, m), ref)
			if err := m.Flush(); err != nil {
				t.Fatal(err)
			}
			o.parent, _ = parentDev(size)
			m2, _ := openToy(t, f, o)
			imagetest.MustEqual(t, "reopened", imagetest.ReadAll(t, m2), ref)
		})
	}
}

// recFile records the file offsets written.
type recFile struct {
	image.File
	mu     sync.Mutex
	writes []int64
	failAt int64 // writes reaching past it fail (0: none)
}

var errInjected = errors.New("injected write error")

func (r *recFile) WriteAt(p []byte, off int64) (int, error) {
	r.mu.Lock()
	r.writes = append(r.writes, off)
	fail := r.failAt > 0 && off+int64(len(p)) > r.failAt
	r.mu.Unlock()
	if fail {
		return 0, errInjected
	}
	return r.File.WriteAt(p, off)
}

// TestFlushWritesChangedUnits checks that Flush writes back only the
// table units that changed, after the data and Commit, and nothing when
// nothing changed.
func TestFlushWritesChangedUnits(t *testing.T) {
	o := toyOpts{size: 64 << 20, bs: 64 << 10} // 1024 entries: 8 units
	rf := &recFile{File: memFile()}
	m, c := openToy(t, rf, o)
	for _, blk := range []int64{0, 5, 900} { // units 0, 0, 7
		if _, err := m.WriteAt([]byte("x"), blk*o.bs+1); err != nil {
			t.Fatal(err)
		}
	}
	rf.writes = nil
	if err := m.Flush(); err != nil {
		t.Fatal(err)
	}
	var table []int64
	for _, w := range rf.writes {
		if w >= toyTable && w < o.dataStart() {
			table = append(table, w)
		}
	}
	if fmt.Sprint(table) != fmt.Sprint([]int64{toyTable, toyTable + 7*512}) || c.commits != 1 {
		t.Fatalf("table writes at %v (want units 0 and 7), %d commits", table, c.commits)
	}
	if rf.writes[0] != 0 { // Commit's header before the table
		t.Fatalf("writes in order %v: Commit first", rf.writes)
	}
	rf.writes = nil
	if err := m.Flush(); err != nil || len(rf.writes) != 0 {
		t.Fatalf("a clean Flush wrote at %v (%v)", rf.writes, err)
	}
}

// TestPartialIO checks the error semantic: n counts the pieces fully
// written before the failure, and the error comes with n < len(p).
func TestPartialIO(t *testing.T) {
	o := toyOpts{size: 1 << 20, bs: 64 << 10}
	rf := &recFile{File: memFile()}
	m, _ := openToy(t, rf, o)
	// Blocks are placed in order of first write, from dataStart: the
	// third block written lands in the file past failAt, so the first
	// two pieces count.
	rf.failAt = o.dataStart() + 2*o.bs + 10
	p := bytes.Repeat([]byte{7}, int(3*o.bs))
	n, err := m.WriteAt(p, 100)
	if !errors.Is(err, errInjected) || n != int(2*o.bs-100) {
		t.Fatalf("WriteAt = %d, %v; want %d and the injected error", n, err, 2*o.bs-100)
	}
	if n, err := m.WriteAt(p[:10], 1<<30); n != 0 || !errors.Is(err, blockdev.ErrOutOfRange) {
		t.Fatalf("WriteAt out of range = %d, %v", n, err)
	}
}

// TestCrashBeforeFlush drops everything after the last Flush: the table
// in the file reaches only flushed blocks, and allocation reuses the
// unreferenced space.
func TestCrashBeforeFlush(t *testing.T) {
	o := toyOpts{size: 1 << 20, bs: 64 << 10}
	f := memFile()
	m, _ := openToy(t, f, o)
	if _, err := m.WriteAt([]byte("kept"), 0); err != nil {
		t.Fatal(err)
	}
	if err := m.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.WriteAt([]byte("lost"), 5*o.bs); err != nil {
		t.Fatal(err)
	}
	m2, _ := openToy(t, f, o) // the first is never flushed again
	got := make([]byte, 4)
	if m2.ReadAt(got, 0); string(got) != "kept" {
		t.Fatalf("flushed block reads %q", got)
	}
	if m2.ReadAt(got, 5*o.bs); string(got) != "\x00\x00\x00\x00" {
		t.Fatalf("unflushed block reads %q", got)
	}
	if _, err := m2.WriteAt([]byte("again"), 7*o.bs); err != nil {
		t.Fatal(err)
	}
	if e, _ := m2.Lookup(7); e.Off != o.dataStart()+o.bs {
		t.Fatalf("new block at %#x, want the unreferenced one at %#x", e.Off, o.dataStart()+o.bs)
	}
}

// failingTruncate is a File whose Truncate fails while fail is set.
type failingTruncate struct {
	image.File
	fail bool
}

func (f *failingTruncate) Truncate(n int64) error {
	if f.fail {
		return fmt.Errorf("truncate: %w", syscall.ENOSPC)
	}
	return f.File.Truncate(n)
}

// TestFailedAllocation checks that an allocation whose file cannot grow
// fails with ErrNoSpace, its space is not given again, and Flush extends
// the file over it before the table is written.
func TestFailedAllocation(t *testing.T) {
	o := toyOpts{size: 1 << 20, bs: 64 << 10}
	f := &failingTruncate{File: memFile()}
	m, _ := openToy(t, f, o)
	f.fail = true
	if _, err := m.WriteAt([]byte("x"), 0); !errors.Is(err, blockdev.ErrNoSpace) {
		t.Fatalf("write: %v", err)
	}
	f.fail = false
	if _, err := m.WriteAt([]byte("y"), o.bs); err != nil {
		t.Fatal(err)
	}
	if e, _ := m.Lookup(1); e.Off != o.dataStart()+o.bs {
		t.Fatalf("block 1 at %#x, want %#x, past the failed one", e.Off, o.dataStart()+o.bs)
	}
	if err := m.Flush(); err != nil {
		t.Fatal(err)
	}
	if n, _ := f.Size(); n < o.dataStart()+2*o.bs {
		t.Fatalf("file of %d bytes", n)
	}
}

// TestHostileEntries checks New refuses entries outside the file, into
// the metadata, and shared.
func TestHostileEntries(t *testing.T) {
	o := toyOpts{size: 1 << 20, bs: 64 << 10}
	for _, tc := range []struct {
		name    string
		entries map[int64]uint32
		want    string
	}{
		{"past-eof", map[int64]uint32{3: 1 << 20}, "toy table entry 3: block at 0x20000000 past the end of the file"},
		{"metadata", map[int64]uint32{2: 1}, ""},
		{"into-table", map[int64]uint32{2: partialBit | 1}, "toy table entry 2: block at 0x200 overlaps the image metadata"},
		{"shared", map[int64]uint32{1: 40, 4: 41}, "toy table entries 1 and 4 share the block"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := memFile()
			f.Truncate(o.dataStart() + 4*o.bs)
			var b [4]byte
			for blk, v := range tc.entries {
				binary.LittleEndian.PutUint32(b[:], v)
				f.WriteAt(b[:], toyTable+4*blk)
			}
			table := make([]byte, 4*o.blocks())
			f.ReadAt(table, toyTable)
			_, err := New(Config{Name: "toy", File: f, Size: o.size, BlockSize: o.bs, Blocks: o.blocks(), Table: table,
				TableOff: toyTable, TableName: "toy table", Codec: &toy{f: f, bs: o.bs}, Reserved: []Span{{0, o.dataStart()}}})
			if tc.want == "" { // entry 1 is Zero: no storage
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, blockdev.ErrCorrupt) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v; want %q", err, tc.want)
			}
		})
	}
}

// mirrored is a toy whose table units are written twice, the second copy
// at mirror (a Locator, like vmdk's redundant grain tables).
type mirrored struct {
	*toy
	mirror int64
	asked  []int64
}

func (c *mirrored) TableAt(u int64) ([]int64, error) {
	c.asked = append(c.asked, u)
	return []int64{toyTable + u*512, c.mirror + u*512}, nil
}

// TestLocator checks that Flush writes each copy of a changed unit where
// the Codec's Locator says.
func TestLocator(t *testing.T) {
	o := toyOpts{size: 64 << 20, bs: 64 << 10}
	f := memFile()
	mirror := o.dataStart()
	f.Truncate(mirror + o.dataStart())
	c := &mirrored{toy: &toy{f: f, bs: o.bs}, mirror: mirror}
	m, err := New(Config{Name: "toy", File: f, Size: o.size, BlockSize: o.bs, Blocks: o.blocks(), Table: make([]byte, 4*o.blocks()),
		Codec: c, Reserved: []Span{{0, mirror + o.dataStart()}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.WriteAt([]byte("x"), 900*o.bs); err != nil {
		t.Fatal(err)
	}
	if err := m.Flush(); err != nil {
		t.Fatal(err)
	}
	a, b := make([]byte, 512), make([]byte, 512)
	f.ReadAt(a, toyTable+7*512)
	f.ReadAt(b, mirror+7*512)
	if fmt.Sprint(c.asked) != "[7]" || !bytes.Equal(a, b) || binary.LittleEndian.Uint32(a[4*(900-7*128):]) == 0 {
		t.Fatalf("asked for %v; unit 7 %x, its copy %x", c.asked, a[:16], b[:16])
	}
}
