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

	"golang.org/x/sys/unix"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
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
	// maxCachedGTs bounds the clean grain tables an extent keeps.
	maxCachedGTs = 4096
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

// sparse is an open sparse extent. Its mutex guards the grain directory,
// the grain table cache and the allocator.
type sparse struct {
	f          image.File
	h          *sparseHeader
	sectors    int64 // sectors of the disk this extent serves
	grainBytes int64
	compressed bool
	zeroGrain  bool

	mu      sync.Mutex
	gd      []uint32
	rgd     []uint32 // nil without a redundant directory
	gts     map[int64]*grainTable
	gdDirty bool
	fileEnd int64
	minData int64 // grains must start here or later (the metadata's end)
	last    struct {
		g    int64 // guest grain of the cached decompressed grain; -1 none
		data []byte
	}
}

// grainTable is a cached grain table.
type grainTable struct {
	e     []uint32
	dirty bool
}

// Grain states lookup reports.
const (
	grainUnallocated = iota
	grainZero
	grainData
	grainCompressed
)

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
		gts:        map[int64]*grainTable{},
		fileEnd:    (fsize + sectorSize - 1) &^ (sectorSize - 1),
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

// table returns grain table i, reading it when it is not cached; nil when
// the directory has none. Called with mu held.
func (s *sparse) table(i int64) (*grainTable, error) {
	if t, ok := s.gts[i]; ok {
		return t, nil
	}
	if s.gd[i] == 0 {
		return nil, nil
	}
	if len(s.gts) >= maxCachedGTs {
		for k, t := range s.gts {
			if !t.dirty {
				delete(s.gts, k)
			}
		}
	}
	raw := make([]byte, 4*s.h.gtes)
	if _, err := s.f.ReadAt(raw, int64(s.gd[i])*sectorSize); err != nil {
		return nil, fmt.Errorf("vmdk: read grain table %d: %w", i, err)
	}
	t := &grainTable{e: make([]uint32, s.h.gtes)}
	for j := range t.e {
		e := binary.LittleEndian.Uint32(raw[4*j:])
		t.e[j] = e
		if e == 0 || (e == gteZero && s.zeroGrain) {
			continue
		}
		off := int64(e) * sectorSize
		need := s.grainBytes
		if s.compressed {
			need = 12
		}
		if off < s.minData || off+need > s.fileEnd {
			return nil, corruptf("grain table %d entry %d (sector %d) outside the data area of %s [%d, %d)", i, j, e, s.f.Name(), s.minData, s.fileEnd)
		}
	}
	s.gts[i] = t
	return t, nil
}

// lookup returns the state of guest grain g (counted from the extent's
// start) and its file offset. Called with mu held.
func (s *sparse) lookup(g int64) (int, int64, error) {
	t, err := s.table(g / s.h.gtes)
	if err != nil || t == nil {
		return grainUnallocated, 0, err
	}
	e := t.e[g%s.h.gtes]
	switch {
	case e == 0:
		return grainUnallocated, 0, nil
	case e == gteZero && s.zeroGrain:
		return grainZero, 0, nil
	case s.compressed:
		return grainCompressed, int64(e) * sectorSize, nil
	}
	return grainData, int64(e) * sectorSize, nil
}

// readCompressed returns the decompressed guest grain g stored at off.
// Called with mu held (it uses the one-grain cache).
func (s *sparse) readCompressed(g, off int64) ([]byte, error) {
	if s.last.g == g {
		return s.last.data, nil
	}
	var hdr [12]byte
	if _, err := s.f.ReadAt(hdr[:], off); err != nil {
		return nil, fmt.Errorf("vmdk: read compressed grain marker at %#x: %w", off, err)
	}
	n := int64(binary.LittleEndian.Uint32(hdr[8:]))
	if n == 0 || n > s.grainBytes+s.grainBytes/16+1024 || off+12+n > s.fileEnd {
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

// allocTable gives grain table i space at the end of the file (and its
// redundant copy). Called with mu held.
func (s *sparse) allocTable(i int64) (*grainTable, error) {
	size := (4*s.h.gtes + sectorSize - 1) &^ (sectorSize - 1)
	need := size
	if s.rgd != nil {
		need *= 2
	}
	if err := s.grow(need); err != nil {
		return nil, err
	}
	s.gd[i] = uint32((s.fileEnd - need) / sectorSize)
	if s.rgd != nil {
		s.rgd[i] = uint32((s.fileEnd - size) / sectorSize)
	}
	s.gdDirty = true
	t := &grainTable{e: make([]uint32, s.h.gtes), dirty: true}
	s.gts[i] = t
	return t, nil
}

// grow extends the file by n zero bytes at fileEnd. Called with mu held.
func (s *sparse) grow(n int64) error {
	if (s.fileEnd+n)/sectorSize > 0xffffffff {
		return fmt.Errorf("vmdk: extent %s would outgrow the 2 TiB its tables can address: %w", s.f.Name(), blockdev.ErrNoSpace)
	}
	if err := s.f.Truncate(s.fileEnd + n); err != nil {
		if errors.Is(err, unix.ENOSPC) {
			return fmt.Errorf("vmdk: grow %s: %w", s.f.Name(), blockdev.ErrNoSpace)
		}
		return fmt.Errorf("vmdk: grow %s: %w", s.f.Name(), err)
	}
	s.fileEnd += n
	return nil
}

// flush writes the dirty grain tables, then (after a sync) the grain
// directories that reach new tables. The caller has synced the data.
func (s *sparse) flush() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	wrote := false
	for i, t := range s.gts {
		if !t.dirty {
			continue
		}
		raw := make([]byte, 4*len(t.e))
		for j, e := range t.e {
			binary.LittleEndian.PutUint32(raw[4*j:], e)
		}
		if _, err := s.f.WriteAt(raw, int64(s.gd[i])*sectorSize); err != nil {
			return fmt.Errorf("vmdk: write grain table %d: %w", i, err)
		}
		if s.rgd != nil {
			if _, err := s.f.WriteAt(raw, int64(s.rgd[i])*sectorSize); err != nil {
				return fmt.Errorf("vmdk: write redundant grain table %d: %w", i, err)
			}
		}
		t.dirty, wrote = false, true
	}
	if s.gdDirty {
		if err := s.f.Sync(); err != nil {
			return fmt.Errorf("vmdk: sync %s: %w", s.f.Name(), err)
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
		s.gdDirty, wrote = false, true
	}
	if wrote {
		if err := s.f.Sync(); err != nil {
			return fmt.Errorf("vmdk: sync %s: %w", s.f.Name(), err)
		}
	}
	return nil
}
