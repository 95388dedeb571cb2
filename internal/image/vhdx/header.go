package vhdx

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// Layout (MS-VHDX): the file identifier, two headers and two region tables
// in the first 1 MiB.
const (
	mib          = 1 << 20
	header1Off   = 64 << 10
	header2Off   = 128 << 10
	region1Off   = 192 << 10
	region2Off   = 256 << 10
	headerSize   = 4 << 10
	regionSize   = 64 << 10
	metaTabSize  = 64 << 10
	maxRegions   = 2047
	maxMetaItems = 2047
	maxMetaItem  = 1 << 20
	// maxSize is the largest virtual disk: 64 TiB.
	maxSize = 64 << 40

	sigHeader = 0x64616568 // "head"
	sigRegion = 0x69676572 // "regi"
)

// Payload and sector bitmap block states (BAT entry bits 0-2).
const (
	stateNotPresent   = 0
	stateUndefined    = 1
	stateZero         = 2
	stateUnmapped     = 5
	stateFullPresent  = 6
	statePartPresent  = 7
	stateBitmapAbsent = 0
	stateBitmapHere   = 6
	batOffsetShift    = 20
)

// corruptf returns an error wrapping blockdev.ErrCorrupt.
func corruptf(format string, a ...any) error {
	return fmt.Errorf("vhdx: "+format+": %w", append(a, blockdev.ErrCorrupt)...)
}

// header is one of the two VHDX headers.
type header struct {
	raw       [headerSize]byte
	seq       uint64
	fileWrite guid
	dataWrite guid
	logGUID   guid
	logOff    int64
	logLen    int64
}

// parseHeader decodes a header; nil when it is not a valid one.
func parseHeader(b []byte, fsize int64) *header {
	le := binary.LittleEndian
	if le.Uint32(b) != sigHeader || le.Uint32(b[4:]) != checksum(b[:headerSize], 4) {
		return nil
	}
	h := &header{seq: le.Uint64(b[8:]), logOff: int64(le.Uint64(b[72:])), logLen: int64(le.Uint32(b[68:]))}
	copy(h.raw[:], b)
	copy(h.fileWrite[:], b[16:32])
	copy(h.dataWrite[:], b[32:48])
	copy(h.logGUID[:], b[48:64])
	if le.Uint16(b[66:]) != 1 { // version
		return nil
	}
	if h.logOff%mib != 0 || h.logLen%mib != 0 || h.logOff < mib || h.logLen > fsize || h.logOff > fsize-h.logLen {
		return nil
	}
	return h
}

// encode writes the fields into raw and recomputes the checksum.
func (h *header) encode() []byte {
	le := binary.LittleEndian
	b := h.raw[:]
	le.PutUint32(b, sigHeader)
	le.PutUint64(b[8:], h.seq)
	copy(b[16:], h.fileWrite[:])
	copy(b[32:], h.dataWrite[:])
	copy(b[48:], h.logGUID[:])
	le.PutUint16(b[64:], 0) // log version
	le.PutUint16(b[66:], 1)
	le.PutUint32(b[68:], uint32(h.logLen))
	le.PutUint64(b[72:], uint64(h.logOff))
	le.PutUint32(b[4:], checksum(b, 4))
	return b
}

// readHeaders returns both headers (nil where invalid) and the index of
// the current one.
func readHeaders(f io.ReaderAt, fsize int64) ([2]*header, int, error) {
	var hs [2]*header
	b := make([]byte, headerSize)
	for i, off := range []int64{header1Off, header2Off} {
		if _, err := f.ReadAt(b, off); err != nil {
			return hs, 0, fmt.Errorf("vhdx: read header %d: %w", i+1, err)
		}
		hs[i] = parseHeader(b, fsize)
	}
	switch {
	case hs[0] == nil && hs[1] == nil:
		return hs, 0, corruptf("neither header is valid (bad signature, CRC-32C, version or log location)")
	case hs[0] == nil:
		return hs, 1, nil
	case hs[1] == nil:
		return hs, 0, nil
	case hs[0].seq == hs[1].seq:
		return hs, 0, corruptf("both headers have sequence number %d", hs[0].seq)
	case hs[1].seq > hs[0].seq:
		return hs, 1, nil
	}
	return hs, 0, nil
}

// region is a region table entry.
type region struct {
	off, length int64
}

// readRegions reads the region table (the second copy when the first is
// damaged) and returns the BAT and metadata regions.
func readRegions(f io.ReaderAt, fsize int64) (bat, meta region, err error) {
	b := make([]byte, regionSize)
	le := binary.LittleEndian
	var lastErr error
	for _, off := range []int64{region1Off, region2Off} {
		if _, err := f.ReadAt(b, off); err != nil {
			return bat, meta, fmt.Errorf("vhdx: read region table: %w", err)
		}
		if le.Uint32(b) != sigRegion || le.Uint32(b[4:]) != checksum(b, 4) {
			lastErr = corruptf("region table at %#x has a bad signature or CRC-32C", off)
			continue
		}
		n := int(le.Uint32(b[8:]))
		if n > maxRegions {
			return bat, meta, corruptf("region table has %d entries (at most %d)", n, maxRegions)
		}
		var haveBAT, haveMeta bool
		for i := range n {
			e := b[16+32*i:]
			var g guid
			copy(g[:], e[:16])
			r := region{off: int64(le.Uint64(e[16:])), length: int64(le.Uint32(e[24:]))}
			required := le.Uint32(e[28:])&1 != 0
			if r.off%mib != 0 || r.length%mib != 0 || r.off < mib || r.length == 0 || r.off > fsize || r.length > fsize-r.off {
				return bat, meta, corruptf("region %d at %#x (+%d) is not inside the file in whole MiB", i, r.off, r.length)
			}
			switch g {
			case regionBAT:
				bat, haveBAT = r, true
			case regionMetadata:
				meta, haveMeta = r, true
			default:
				if required {
					return bat, meta, fmt.Errorf("vhdx: required region %s: %w", g, image.ErrUnsupported)
				}
			}
		}
		if !haveBAT || !haveMeta {
			return bat, meta, corruptf("region table lacks the BAT or the metadata region")
		}
		if bat.off < meta.off+meta.length && meta.off < bat.off+bat.length {
			return bat, meta, corruptf("BAT and metadata regions overlap")
		}
		return bat, meta, nil
	}
	return bat, meta, lastErr
}

// metadata is what the metadata region says about the disk.
type metadata struct {
	blockSize   int64
	leaveAlloc  bool
	hasParent   bool
	size        int64
	lss, pss    int64
	diskID      guid
	parent      map[string]string // parent locator key/values
	parentValid bool
}

// readMetadata parses the metadata region.
func readMetadata(f io.ReaderAt, r region) (*metadata, error) {
	tab := make([]byte, metaTabSize)
	if _, err := f.ReadAt(tab, r.off); err != nil {
		return nil, fmt.Errorf("vhdx: read metadata table: %w", err)
	}
	if !bytes.Equal(tab[:8], signatureMetaTab) {
		return nil, corruptf("metadata table has no signature")
	}
	le := binary.LittleEndian
	n := int(le.Uint16(tab[10:]))
	if n > maxMetaItems {
		return nil, corruptf("metadata table has %d entries (at most %d)", n, maxMetaItems)
	}
	m := &metadata{}
	found := map[guid]bool{}
	item := func(off, length int64) ([]byte, error) {
		if off < metaTabSize || length > maxMetaItem || off > r.length || length > r.length-off {
			return nil, corruptf("metadata item at %d (+%d) outside the metadata region", off, length)
		}
		b := make([]byte, length)
		if _, err := f.ReadAt(b, r.off+off); err != nil {
			return nil, fmt.Errorf("vhdx: read metadata: %w", err)
		}
		return b, nil
	}
	for i := range n {
		e := tab[32+32*i:]
		var g guid
		copy(g[:], e[:16])
		off, length, flags := int64(le.Uint32(e[16:])), int64(le.Uint32(e[20:])), le.Uint32(e[24:])
		want := map[guid]int64{metaFileParams: 8, metaDiskSize: 8, metaPage83: 16, metaLogicalSS: 4, metaPhysicalSS: 4}
		if found[g] {
			return nil, corruptf("metadata item %s is listed twice", g)
		}
		if w, ok := want[g]; ok && length < w {
			return nil, corruptf("metadata item %s of %d bytes (want %d)", g, length, w)
		}
		var b []byte
		if g == metaParentLoc || want[g] > 0 {
			var err error
			if b, err = item(off, length); err != nil {
				return nil, err
			}
		}
		found[g] = true
		switch g {
		case metaFileParams:
			m.blockSize = int64(le.Uint32(b))
			m.leaveAlloc = le.Uint32(b[4:])&1 != 0
			m.hasParent = le.Uint32(b[4:])&2 != 0
		case metaDiskSize:
			m.size = int64(le.Uint64(b))
		case metaPage83:
			copy(m.diskID[:], b)
		case metaLogicalSS:
			m.lss = int64(le.Uint32(b))
		case metaPhysicalSS:
			m.pss = int64(le.Uint32(b))
		case metaParentLoc:
			p, err := parseLocator(b)
			if err != nil {
				return nil, err
			}
			m.parent, m.parentValid = p, true
		default:
			if flags&4 != 0 {
				return nil, fmt.Errorf("vhdx: required metadata item %s: %w", g, image.ErrUnsupported)
			}
		}
	}
	for _, g := range []guid{metaFileParams, metaDiskSize, metaLogicalSS, metaPhysicalSS} {
		if !found[g] {
			return nil, corruptf("metadata item %s is missing", g)
		}
	}
	switch {
	case m.blockSize < mib || m.blockSize > 256*mib || m.blockSize&(m.blockSize-1) != 0:
		return nil, corruptf("block size %d is not a power of two from 1 MiB to 256 MiB", m.blockSize)
	case m.lss != 512 && m.lss != 4096:
		return nil, corruptf("logical sector size %d (want 512 or 4096)", m.lss)
	case m.pss != 512 && m.pss != 4096:
		return nil, corruptf("physical sector size %d (want 512 or 4096)", m.pss)
	case m.size <= 0 || m.size > maxSize || m.size%m.lss != 0:
		return nil, corruptf("virtual size %d is not a multiple of %d up to 64 TiB", m.size, m.lss)
	case m.hasParent && !m.parentValid:
		return nil, corruptf("differencing disk without a parent locator")
	}
	return m, nil
}

// chunkRatio is the number of payload blocks one sector bitmap block
// covers.
func (m *metadata) chunkRatio() int64 { return (1 << 23) * m.lss / m.blockSize }

// batEntries returns the number of BAT entries the disk needs.
func (m *metadata) batEntries() int64 {
	cr := m.chunkRatio()
	blocks := (m.size + m.blockSize - 1) / m.blockSize
	if m.hasParent {
		return (blocks + cr - 1) / cr * (cr + 1)
	}
	return blocks + (blocks-1)/cr
}
