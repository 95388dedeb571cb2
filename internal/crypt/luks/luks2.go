package luks

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"slices"
)

// LUKS2 binary header constants (LUKS2 On-Disk Format Specification 1.1).
const (
	luks2BinSize    = 4096 // the binary header; the JSON area follows it
	luks2MinHdrSize = 16 << 10
	luks2MaxHdrSize = 4 << 20
	luks2SaltSize   = 64
	luks2CsumSize   = 64
)

// Field offsets in the binary header.
const (
	l2Version   = 6
	l2HdrSize   = 8
	l2Seqid     = 16
	l2Label     = 24
	l2CsumAlg   = 72
	l2Salt      = 104
	l2UUID      = 168
	l2Subsystem = 208
	l2HdrOffset = 256
	l2Csum      = 448
)

// luks2HdrSizes are the header sizes (binary header + JSON area) LUKS2
// allows; the secondary header starts at the same offset.
var luks2HdrSizes = []int64{16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20, 2 << 20, 4 << 20}

// luks2Bin is the binary header of one copy.
type luks2Bin struct {
	hdrSize   int64
	seqid     uint64
	label     string
	csumAlg   string
	salt      [luks2SaltSize]byte
	uuid      string
	subsystem string
	hdrOffset int64
}

// parseLUKS2Copy decodes and checks one header copy, b holding the whole
// copy (binary header and JSON area), which was read at offset off.
func parseLUKS2Copy(b []byte, off int64) (*luks2Bin, *luks2Meta, error) {
	if len(b) < luks2BinSize {
		return nil, nil, fmt.Errorf("luks: LUKS2 header at %d: short: %w", off, ErrCorrupt)
	}
	magic := luksMagic
	if off != 0 {
		magic = luks2SecondaryMagic
	}
	if !bytes.Equal(b[:6], magic) {
		return nil, nil, fmt.Errorf("luks: LUKS2 header at %d: bad magic: %w", off, ErrCorrupt)
	}
	be := binary.BigEndian
	if v := be.Uint16(b[l2Version:]); v != 2 {
		return nil, nil, fmt.Errorf("luks: LUKS2 header at %d: version %d: %w", off, v, ErrCorrupt)
	}
	h := &luks2Bin{
		hdrSize:   int64(min(be.Uint64(b[l2HdrSize:]), 1<<62)),
		seqid:     be.Uint64(b[l2Seqid:]),
		hdrOffset: int64(min(be.Uint64(b[l2HdrOffset:]), 1<<62)),
	}
	if !slices.Contains(luks2HdrSizes, h.hdrSize) || int64(len(b)) != h.hdrSize {
		return nil, nil, fmt.Errorf("luks: LUKS2 header at %d: header size %d: %w", off, h.hdrSize, ErrCorrupt)
	}
	if h.hdrOffset != off {
		return nil, nil, fmt.Errorf("luks: LUKS2 header at %d says it is at %d: %w", off, h.hdrOffset, ErrCorrupt)
	}
	var err error
	for _, f := range []struct {
		dst  *string
		at   int
		n    int
		name string
	}{
		{&h.label, l2Label, 48, "label"},
		{&h.csumAlg, l2CsumAlg, 32, "checksum algorithm"},
		{&h.uuid, l2UUID, 40, "uuid"},
		{&h.subsystem, l2Subsystem, 48, "subsystem"},
	} {
		if *f.dst, err = cstring(b[f.at:f.at+f.n], f.name); err != nil {
			return nil, nil, fmt.Errorf("luks: LUKS2 header at %d: %w", off, err)
		}
	}
	copy(h.salt[:], b[l2Salt:])
	sum, err := luks2Checksum(b, h.csumAlg)
	if err != nil {
		return nil, nil, fmt.Errorf("luks: LUKS2 header at %d: %w", off, err)
	}
	if !bytes.Equal(sum, b[l2Csum:l2Csum+len(sum)]) {
		return nil, nil, fmt.Errorf("luks: LUKS2 header at %d: checksum mismatch: %w", off, ErrCorrupt)
	}
	meta, err := parseLUKS2JSON(b[luks2BinSize:], h.hdrSize)
	if err != nil {
		return nil, nil, fmt.Errorf("luks: LUKS2 header at %d: %w", off, err)
	}
	return h, meta, nil
}

// luks2Checksum is the checksum of a header copy, computed with the csum
// field taken as zeroes.
func luks2Checksum(b []byte, alg string) ([]byte, error) {
	newHash, err := hashFunc(alg)
	if err != nil {
		return nil, err
	}
	h := newHash()
	h.Write(b[:l2Csum])
	h.Write(make([]byte, luks2CsumSize))
	h.Write(b[l2Csum+luks2CsumSize:])
	return h.Sum(nil), nil
}

// marshal encodes a header copy at offset off (primary at 0, secondary at
// hdrSize) around the JSON text js, with its checksum.
func (h *luks2Bin) marshal(js []byte, off int64) ([]byte, error) {
	if int64(len(js)) >= h.hdrSize-luks2BinSize {
		return nil, fmt.Errorf("luks: %d bytes of JSON metadata do not fit the %d-byte area: %w",
			len(js), h.hdrSize-luks2BinSize, ErrOptions)
	}
	b := make([]byte, h.hdrSize)
	be := binary.BigEndian
	if off == 0 {
		copy(b, luksMagic)
	} else {
		copy(b, luks2SecondaryMagic)
	}
	be.PutUint16(b[l2Version:], 2)
	be.PutUint64(b[l2HdrSize:], uint64(h.hdrSize))
	be.PutUint64(b[l2Seqid:], h.seqid)
	putCString(b[l2Label:l2Label+47], h.label)
	putCString(b[l2CsumAlg:l2CsumAlg+31], h.csumAlg)
	copy(b[l2Salt:], h.salt[:])
	putCString(b[l2UUID:l2UUID+39], h.uuid)
	putCString(b[l2Subsystem:l2Subsystem+47], h.subsystem)
	be.PutUint64(b[l2HdrOffset:], uint64(off))
	copy(b[luks2BinSize:], js)
	sum, err := luks2Checksum(b, h.csumAlg)
	if err != nil {
		return nil, err
	}
	copy(b[l2Csum:], sum)
	return b, nil
}

// luks2Copy is a header copy read from the device, or why it is unusable.
type luks2Copy struct {
	bin  *luks2Bin
	meta *luks2Meta
	err  error
}

// readLUKS2Copy reads and parses the header copy at off. hdrSize is the
// copy's size when known, or 0 to take it from the copy's binary header.
func readLUKS2Copy(r io.ReaderAt, devSize, off, hdrSize int64) luks2Copy {
	if hdrSize == 0 {
		var bin [luks2BinSize]byte
		if off+luks2BinSize > devSize {
			return luks2Copy{err: fmt.Errorf("luks: LUKS2 header at %d: past the end of the device: %w", off, ErrCorrupt)}
		}
		if _, err := r.ReadAt(bin[:], off); err != nil {
			return luks2Copy{err: fmt.Errorf("luks: read LUKS2 header at %d: %w", off, err)}
		}
		hdrSize = int64(binary.BigEndian.Uint64(bin[l2HdrSize:]))
		if !slices.Contains(luks2HdrSizes, hdrSize) {
			return luks2Copy{err: fmt.Errorf("luks: LUKS2 header at %d: header size %d: %w", off, hdrSize, ErrCorrupt)}
		}
	}
	if off+hdrSize > devSize {
		return luks2Copy{err: fmt.Errorf("luks: LUKS2 header at %d: %d bytes past the end of the device: %w", off, hdrSize, ErrCorrupt)}
	}
	b := make([]byte, hdrSize)
	if _, err := r.ReadAt(b, off); err != nil {
		return luks2Copy{err: fmt.Errorf("luks: read LUKS2 header at %d: %w", off, err)}
	}
	bin, meta, err := parseLUKS2Copy(b, off)
	return luks2Copy{bin: bin, meta: meta, err: err}
}

// readLUKS2 reads both header copies and returns the valid one with the
// higher sequence id (the primary on a tie), and whether it is the
// secondary. When the primary is unreadable, the secondary is searched for
// at every offset LUKS2 allows.
func readLUKS2(r io.ReaderAt, devSize int64) (bin *luks2Bin, meta *luks2Meta, secondary bool, err error) {
	p := readLUKS2Copy(r, devSize, 0, 0)
	offs := luks2HdrSizes
	if p.err == nil {
		offs = []int64{p.bin.hdrSize}
	}
	s := luks2Copy{err: fmt.Errorf("luks: no LUKS2 secondary header: %w", ErrCorrupt)}
	damaged := false
	for _, off := range offs {
		c := readLUKS2Copy(r, devSize, off, off)
		if c.err == nil || len(offs) == 1 {
			s = c
			break
		}
		if !damaged && hasMagicAt(r, devSize, off, luks2SecondaryMagic) {
			s, damaged = c, true // a damaged copy: its error says more than "none found"
		}
	}
	switch {
	case p.err == nil && (s.err != nil || s.bin.seqid <= p.bin.seqid):
		return p.bin, p.meta, false, nil
	case s.err == nil:
		return s.bin, s.meta, true, nil
	}
	return nil, nil, false, fmt.Errorf("%w; secondary: %w", p.err, s.err)
}

// hasMagicAt reports whether magic is at off.
func hasMagicAt(r io.ReaderAt, devSize, off int64, magic []byte) bool {
	m := make([]byte, len(magic))
	if off+int64(len(m)) > devSize {
		return false
	}
	_, err := r.ReadAt(m, off)
	return err == nil && bytes.Equal(m, magic)
}
