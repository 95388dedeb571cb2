package vmdk

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
	"vdisk/internal/image/blockmap"
)

// Sparse extent layout (VMware Virtual Disk Format 5.0, "Hosted Sparse
// Extent Header"), little-endian.
const (
	sectorSize = 512
	magicKDMV  = 0x564d444b // "KDMV"

	flagNLDetect   = 1 << 0
	flagRGD        = 1 << 1
	flagZeroGrain  = 1 << 2
	flagCompressed = 1 << 16
	flagMarkers    = 1 << 17

	compressDeflate = 1
	gdAtEnd         = 0xffffffffffffffff
	gteZero         = 1 // grain table entry of a zeroed grain (flagZeroGrain)

	// maxSectors bounds a disk or extent: 64 TiB, VMware's limit.
	maxSectors = 64 << 40 / sectorSize
	// maxGrain bounds the grain size (qemu's limit: 128 MiB).
	maxGrain = 128 << 20
	// maxCompressedGrain bounds the grain size of compressed extents,
	// which are read a grain at a time (VMware and qemu use 64 KiB).
	maxCompressedGrain = 1 << 20
	// maxGTEs bounds the entries of one grain table (VMware uses 512).
	maxGTEs = 512
)

// sparseHeader is the header of a sparse extent.
type sparseHeader struct {
	version      uint32
	flags        uint32
	capacity     int64 // sectors
	grain        int64 // sectors
	descOff      int64 // sectors
	descSize     int64 // sectors
	gtes         int64
	rgdOff       int64 // sectors
	gdOff        uint64
	overhead     int64 // sectors
	compressAlgo uint16
}

// parseSparseHeader decodes and validates a sparse extent header.
func parseSparseHeader(b []byte) (*sparseHeader, error) {
	if len(b) < sectorSize || binary.LittleEndian.Uint32(b) != magicKDMV {
		return nil, ErrNotVMDK
	}
	le := binary.LittleEndian
	h := &sparseHeader{
		version:      le.Uint32(b[4:]),
		flags:        le.Uint32(b[8:]),
		capacity:     int64(le.Uint64(b[12:])),
		grain:        int64(le.Uint64(b[20:])),
		descOff:      int64(le.Uint64(b[28:])),
		descSize:     int64(le.Uint64(b[36:])),
		gtes:         int64(le.Uint32(b[44:])),
		rgdOff:       int64(le.Uint64(b[48:])),
		gdOff:        le.Uint64(b[56:]),
		overhead:     int64(le.Uint64(b[64:])),
		compressAlgo: le.Uint16(b[77:]),
	}
	switch {
	case h.version < 1 || h.version > 3:
		return nil, fmt.Errorf("vmdk: sparse extent version %d: %w", h.version, errUnsupported)
	case h.flags&flagNLDetect != 0 && (b[73] != '\n' || b[74] != ' ' || b[75] != '\r' || b[76] != '\n'):
		return nil, corruptf("newline detection characters are damaged (the file was transferred as text)")
	case h.capacity < 0 || h.capacity > maxSectors:
		return nil, corruptf("capacity of %d sectors is larger than 64 TiB", h.capacity)
	case h.grain < 1 || h.grain*sectorSize > maxGrain || h.grain&(h.grain-1) != 0:
		return nil, corruptf("grain of %d sectors is not a power of two up to 128 MiB", h.grain)
	case h.gtes < 1 || h.gtes > maxGTEs:
		return nil, corruptf("%d entries per grain table (want 1 to %d)", h.gtes, maxGTEs)
	case h.flags&flagCompressed != 0 && h.compressAlgo != compressDeflate:
		return nil, fmt.Errorf("vmdk: compression algorithm %d: %w", h.compressAlgo, errUnsupported)
	case h.flags&flagCompressed != 0 && h.grain*sectorSize > maxCompressedGrain:
		return nil, fmt.Errorf("vmdk: compressed grains of %d sectors (at most %d bytes): %w", h.grain, maxCompressedGrain, errUnsupported)
	case h.descOff < 0 || h.descSize < 0 || h.descSize*sectorSize > maxDescriptor:
		return nil, corruptf("embedded descriptor of %d sectors at sector %d", h.descSize, h.descOff)
	}
	return h, nil
}

// encode returns the header as a sector.
func (h *sparseHeader) encode() []byte {
	le := binary.LittleEndian
	b := make([]byte, sectorSize)
	le.PutUint32(b, magicKDMV)
	le.PutUint32(b[4:], h.version)
	le.PutUint32(b[8:], h.flags)
	le.PutUint64(b[12:], uint64(h.capacity))
	le.PutUint64(b[20:], uint64(h.grain))
	le.PutUint64(b[28:], uint64(h.descOff))
	le.PutUint64(b[36:], uint64(h.descSize))
	le.PutUint32(b[44:], uint32(h.gtes))
	le.PutUint64(b[48:], uint64(h.rgdOff))
	le.PutUint64(b[56:], h.gdOff)
	le.PutUint64(b[64:], uint64(h.overhead))
	copy(b[73:], "\n \r\n")
	le.PutUint16(b[77:], h.compressAlgo)
	return b
}

// sparse is an open sparse extent: its header and grain directories,
// and the Codec of the blockmap core over its grain tables (Image.serve).
// Compressed grains are read through its own path (readCompressed) from
// the entries the core looks up.
type sparse struct {
	f          image.File
	h          *sparseHeader
	sectors    int64 // sectors of the disk this extent serves
	grainBytes int64
	compressed bool
	zeroGrain  bool
	fsize      int64
	minData    int64 // grains must start here or later (the metadata's end)

	// Guarded by the Map's mutex (the Codec's methods are called under
	// it).
	gd, rgd []uint32 // rgd nil without a redundant directory
	gdDirty bool

	mu   sync.Mutex // guards last
	last struct {
		g    int64 // guest grain of the cached decompressed grain; -1 none
		data []byte
	}
}

// openSparse reads the header and grain directory of the sparse extent in
// f, which serves sectors sectors of the disk.
func openSparse(f image.File, h *sparseHeader, sectors int64) (*sparse, error) {
	fsize, err := f.Size()
	if err != nil {
		return nil, fmt.Errorf("vmdk: %w", err)
	}
	if h.gdOff == gdAtEnd {
		// A stream-optimized extent written in one pass: the real header
		// is the footer, in the second-to-last sector.
		if fsize < 3*sectorSize {
			return nil, corruptf("stream-optimized extent of %d bytes has no footer", fsize)
		}
		b := make([]byte, sectorSize)
		if _, err := f.ReadAt(b, fsize-2*sectorSize); err != nil {
			return nil, fmt.Errorf("vmdk: read footer: %w", err)
		}
		if h, err = parseSparseHeader(b); err != nil {
			return nil, fmt.Errorf("vmdk: footer: %w", err)
		}
		if h.gdOff == gdAtEnd {
			return nil, corruptf("footer has no grain directory offset")
		}
	}
	if sectors > h.capacity {
		return nil, corruptf("extent of %d sectors in the descriptor, %d in its header", sectors, h.capacity)
	}
	s := &sparse{
		f: f, h: h, sectors: sectors, grainBytes: h.grain * sectorSize,
		compressed: h.flags&flagCompressed != 0,
		zeroGrain:  h.flags&flagZeroGrain != 0,
		fsize:      fsize,
	}
	s.last.g = -1
	span := h.gtes * h.grain
	n := (h.capacity + span - 1) / span
	if s.gd, err = s.readDirectory("grain directory", int64(h.gdOff), n, fsize); err != nil {
		return nil, err
	}
	if h.flags&flagRGD != 0 && h.rgdOff != 0 {
		if s.rgd, err = s.readDirectory("redundant grain directory", h.rgdOff, n, fsize); err != nil {
			return nil, err
		}
	}
	if h.overhead*sectorSize <= fsize {
		s.minData = h.overhead * sectorSize
	}
	return s, nil
}

// readDirectory reads and checks a grain directory of n entries at sector
// off: n is what the capacity needs, and the directory must lie in the
// file before it is read. The tables it points at lie in the file and
// apart, so walking them all costs at most the file's size.
func (s *sparse) readDirectory(what string, off, n, fsize int64) ([]uint32, error) {
	if off < 1 || off > fsize/sectorSize || 4*n > fsize-off*sectorSize {
		return nil, corruptf("%s of %d entries (a capacity of %d sectors in grains of %d sectors, %d per table) at sector %d outside the file of %d bytes",
			what, n, s.h.capacity, s.h.grain, s.h.gtes, off, fsize)
	}
	raw := make([]byte, 4*n)
	if _, err := s.f.ReadAt(raw, off*sectorSize); err != nil {
		return nil, fmt.Errorf("vmdk: read %s: %w", what, err)
	}
	gd := make([]uint32, n)
	var used []uint32
	for i := range gd {
		gd[i] = binary.LittleEndian.Uint32(raw[4*i:])
		if gd[i] != 0 && int64(gd[i])*sectorSize+4*s.h.gtes > fsize {
			return nil, corruptf("%s entry %d (sector %d) points past the end of the file of %d bytes", what, i, gd[i], fsize)
		}
		if gd[i] != 0 {
			used = append(used, gd[i])
		}
	}
	slices.Sort(used)
	for i := 1; i < len(used); i++ {
		if int64(used[i]-used[i-1])*sectorSize < 4*s.h.gtes {
			return nil, corruptf("%s points at overlapping grain tables at sectors %d and %d", what, used[i-1], used[i])
		}
	}
	return gd, nil
}

// Get decodes a grain table entry: 0 is unallocated, 1 (with the
// zeroed-grain flag) a zeroed grain, else the grain's sector (of a
// compressed grain, its marker's).
func (s *sparse) Get(t []byte, i int64) blockmap.Entry {
	switch e := binary.LittleEndian.Uint32(t[4*i:]); {
	case e == 0:
		return blockmap.Entry{}
	case e == gteZero && s.zeroGrain:
		return blockmap.Entry{State: blockmap.Zero}
	default:
		return blockmap.Entry{State: blockmap.Data, Off: int64(e) * sectorSize}
	}
}

func (s *sparse) Put(t []byte, i int64, e blockmap.Entry) int64 {
	binary.LittleEndian.PutUint32(t[4*i:], uint32(e.Off/sectorSize))
	return 4 * i
}

// gtBytes is the file space of one grain table.
func (s *sparse) gtBytes() int64 { return (4*s.h.gtes + sectorSize - 1) &^ (sectorSize - 1) }

// Place puts the grain at end, after its grain table (and the table's
// redundant copy) when the directory has none: the directories reach the
// file at Commit, the new table (zeroes until the core writes it) after.
func (s *sparse) Place(blk, end int64) (blockmap.Placement, error) {
	off, u := (end+sectorSize-1)&^(sectorSize-1), blk/s.h.gtes
	copies := int64(0)
	if s.gd[u] == 0 {
		copies = 1
		if s.rgd != nil {
			copies = 2
		}
	}
	pl := blockmap.Placement{End: off + copies*s.gtBytes() + s.grainBytes}
	if pl.End/sectorSize > 0xffffffff {
		return pl, fmt.Errorf("vmdk: extent %s would outgrow the 2 TiB its tables can address: %w", s.f.Name(), blockdev.ErrNoSpace)
	}
	for c, d := range [][]uint32{s.gd, s.rgd}[:copies] {
		d[u] = uint32((off + int64(c)*s.gtBytes()) / sectorSize)
		s.gdDirty = true
	}
	pl.Entry = blockmap.Entry{State: blockmap.Data, Off: pl.End - s.grainBytes}
	return pl, nil
}

// Load reads grain table u (zeroes when the directory has none) and
// checks that its grains lie in the data area, before end.
func (s *sparse) Load(u int64, b []byte, end int64) error {
	if s.gd[u] == 0 {
		clear(b)
		return nil
	}
	at := int64(s.gd[u]) * sectorSize
	if n, err := s.f.ReadAt(b, at); err != nil {
		if !errors.Is(err, io.EOF) || at < s.fsize {
			return fmt.Errorf("vmdk: read grain table %d: %w", u, err)
		}
		clear(b[n:]) // placed this session where a failed allocation left the file short
	}
	need := s.grainBytes
	if s.compressed {
		need = 12
	}
	for j := range int64(len(b) / 4) {
		e := binary.LittleEndian.Uint32(b[4*j:])
		if off := int64(e) * sectorSize; e != 0 && (e != gteZero || !s.zeroGrain) && (off < s.minData || off+need > end) {
			return corruptf("grain table %d entry %d (sector %d) outside the data area of %s [%d, %d)", u, j, e, s.f.Name(), s.minData, end)
		}
	}
	return nil
}

// TableAt is where grain table u and its redundant copy lie.
func (s *sparse) TableAt(u int64) ([]int64, error) {
	if s.gd[u] == 0 {
		return nil, fmt.Errorf("vmdk: grain table %d has no place in the directory", u)
	}
	offs := []int64{int64(s.gd[u]) * sectorSize}
	if s.rgd != nil && s.rgd[u] != 0 {
		offs = append(offs, int64(s.rgd[u])*sectorSize)
	}
	return offs, nil
}

// Commit writes the grain directories that reach new grain tables.
func (s *sparse) Commit(int64) error {
	if !s.gdDirty {
		return nil
	}
	for _, d := range []struct {
		gd  []uint32
		off int64
	}{{s.gd, int64(s.h.gdOff)}, {s.rgd, s.h.rgdOff}} {
		if d.gd == nil {
			continue
		}
		raw := make([]byte, 4*len(d.gd))
		for j, e := range d.gd {
			binary.LittleEndian.PutUint32(raw[4*j:], e)
		}
		if _, err := s.f.WriteAt(raw, d.off*sectorSize); err != nil {
			return fmt.Errorf("vmdk: write grain directory: %w", err)
		}
	}
	s.gdDirty = false
	return nil
}

// readCompressed returns the decompressed guest grain g stored at off.
// Called with mu held (it uses the one-grain cache).
func (s *sparse) readCompressed(g, off int64) ([]byte, error) {
	end := (s.fsize + sectorSize - 1) &^ (sectorSize - 1)
	if s.last.g == g {
		return s.last.data, nil
	}
	var hdr [12]byte
	if _, err := s.f.ReadAt(hdr[:], off); err != nil {
		return nil, fmt.Errorf("vmdk: read compressed grain marker at %#x: %w", off, err)
	}
	n := int64(binary.LittleEndian.Uint32(hdr[8:]))
	if n == 0 || n > s.grainBytes+s.grainBytes/16+1024 || off+12+n > end {
		return nil, corruptf("compressed grain at %#x claims %d bytes", off, n)
	}
	comp := make([]byte, n)
	if _, err := s.f.ReadAt(comp, off+12); err != nil {
		return nil, fmt.Errorf("vmdk: read compressed grain at %#x: %w", off, err)
	}
	zr, err := zlib.NewReader(bytes.NewReader(comp))
	if err != nil {
		return nil, corruptf("compressed grain at %#x: %v", off, err)
	}
	data := make([]byte, s.grainBytes)
	m, err := io.ReadFull(zr, data)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, corruptf("compressed grain at %#x: %v", off, err)
	}
	clear(data[m:])
	s.last.g, s.last.data = g, data
	return data, nil
}
