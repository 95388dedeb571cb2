package qcow2

import (
	"encoding/binary"
	"fmt"
	"strings"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// Spec limits and constants (docs/interop/qcow2.txt).
const (
	magic          = 0x514649fb // "QFI\xfb"
	minClusterBits = 9          // 512 B
	maxClusterBits = 21         // 2 MiB, qemu's implementation limit
	minExtL2Bits   = 14         // extended L2 needs 16 KiB clusters
	v2HeaderLen    = 72
	v3HeaderLen    = 104
	maxBackingName = 1023
	// maxL1Bytes is qemu's limit on the active L1 table (32 MiB).
	maxL1Bytes = 32 << 20
	// maxRefTableBytes is qemu's limit on the refcount table (8 MiB).
	maxRefTableBytes = 8 << 20
	// maxSnapshots bounds the snapshot table (qemu: 65536).
	maxSnapshots = 65536
	// maxSnapshotTableBytes bounds the bytes read for the snapshot table.
	maxSnapshotTableBytes = 64 << 20
	// maxFeatureNames bounds the feature-name table entries kept.
	maxFeatureNames = 192
	// maxBitmaps and maxBitmapDirBytes are qemu's limits on persistent
	// bitmaps.
	maxBitmaps        = 65535
	maxBitmapDirBytes = 64 << 20
)

// Incompatible and compatible feature bits. vdisk knows no autoclear
// feature: it clears them all before writing.
const (
	incDirty       = 1 << 0
	incCorrupt     = 1 << 1
	incDataFile    = 1 << 2
	incCompression = 1 << 3
	incExtL2       = 1 << 4
	incKnown       = incDirty | incCorrupt | incDataFile | incCompression | incExtL2

	compatLazyRefcounts = 1 << 0
)

// Header extension types.
const (
	extEnd          = 0x00000000
	extBackingFmt   = 0xe2792aca
	extFeatureNames = 0x6803f857
	extBitmaps      = 0x23852875
	extCrypto       = 0x0537be77
	extDataFile     = 0x44415441
)

// Compression types (header byte 104).
const (
	compressZlib = 0
	compressZstd = 1
)

// featureName is one entry of the feature-name table extension.
type featureName struct {
	kind uint8 // 0 incompatible, 1 compatible, 2 autoclear
	bit  uint8
	name string
}

// header is the parsed qcow2 header with its extensions.
type header struct {
	version          uint32
	backingOff       uint64
	backingLen       uint32
	clusterBits      uint32
	size             uint64
	cryptMethod      uint32
	l1Size           uint32
	l1Off            uint64
	refTableOff      uint64
	refTableClusters uint32
	nbSnapshots      uint32
	snapshotsOff     uint64
	incompat         uint64
	compat           uint64
	autoclear        uint64
	refcountOrder    uint32
	headerLen        uint32
	compression      uint8

	backingFile   string
	backingFormat string
	features      []featureName
	dataFile      string
	hasBitmaps    bool
	bitmapDirOff  uint64
	bitmapDirSize uint64
	nbBitmaps     uint32
	cryptoOff     uint64
	cryptoLen     uint64
}

func (h *header) clusterSize() int64 { return 1 << h.clusterBits }
func (h *header) extL2() bool        { return h.incompat&incExtL2 != 0 }
func (h *header) refcountBits() int  { return 1 << h.refcountOrder }

// l2Entries is the number of entries in one L2 table.
func (h *header) l2Entries() int64 {
	if h.extL2() {
		return h.clusterSize() / 16
	}
	return h.clusterSize() / 8
}

// l1Needed is the number of L1 entries a disk of the header's size needs.
func (h *header) l1Needed() uint64 {
	span := uint64(h.clusterSize()) * uint64(h.l2Entries())
	return (h.size + span - 1) / span
}

// corruptf returns an error that wraps blockdev.ErrCorrupt.
func corruptf(format string, a ...any) error {
	return fmt.Errorf("qcow2: %s: %w", fmt.Sprintf(format, a...), blockdev.ErrCorrupt)
}

// unsupportedf returns an error that wraps image.ErrUnsupported.
func unsupportedf(format string, a ...any) error {
	return fmt.Errorf("qcow2: %s: %w", fmt.Sprintf(format, a...), image.ErrUnsupported)
}

// probe reports whether b starts with the qcow2 magic and a known version.
func probe(b []byte) bool {
	if len(b) < 8 {
		return false
	}
	v := binary.BigEndian.Uint32(b[4:])
	return binary.BigEndian.Uint32(b) == magic && (v == 2 || v == 3)
}

// parseHeader parses the header in buf, which holds the start of the file
// (at least the first cluster, or the whole file if it is shorter).
// fileSize is the file's length; every table must lie inside it.
func parseHeader(buf []byte, fileSize int64) (*header, error) {
	be := binary.BigEndian
	if len(buf) < v2HeaderLen {
		return nil, fmt.Errorf("qcow2: file of %d bytes is shorter than a header: %w", len(buf), ErrNotQcow2)
	}
	if be.Uint32(buf) != magic {
		return nil, fmt.Errorf("qcow2: bad magic %#x: %w", be.Uint32(buf), ErrNotQcow2)
	}
	h := &header{
		version:          be.Uint32(buf[4:]),
		backingOff:       be.Uint64(buf[8:]),
		backingLen:       be.Uint32(buf[16:]),
		clusterBits:      be.Uint32(buf[20:]),
		size:             be.Uint64(buf[24:]),
		cryptMethod:      be.Uint32(buf[32:]),
		l1Size:           be.Uint32(buf[36:]),
		l1Off:            be.Uint64(buf[40:]),
		refTableOff:      be.Uint64(buf[48:]),
		refTableClusters: be.Uint32(buf[56:]),
		nbSnapshots:      be.Uint32(buf[60:]),
		snapshotsOff:     be.Uint64(buf[64:]),
		refcountOrder:    4,
		headerLen:        v2HeaderLen,
	}
	switch h.version {
	case 2:
	case 3:
		if len(buf) < v3HeaderLen {
			return nil, corruptf("version 3 header truncated at %d bytes", len(buf))
		}
		h.incompat = be.Uint64(buf[72:])
		h.compat = be.Uint64(buf[80:])
		h.autoclear = be.Uint64(buf[88:])
		h.refcountOrder = be.Uint32(buf[96:])
		h.headerLen = be.Uint32(buf[100:])
	default:
		return nil, unsupportedf("version %d (want 2 or 3)", h.version)
	}
	if h.clusterBits < minClusterBits || h.clusterBits > maxClusterBits {
		return nil, corruptf("cluster_bits %d outside [%d, %d]", h.clusterBits, minClusterBits, maxClusterBits)
	}
	cs := h.clusterSize()
	if int64(len(buf)) > cs {
		buf = buf[:cs]
	}
	if h.version == 3 {
		if h.headerLen < v3HeaderLen || h.headerLen%8 != 0 || int64(h.headerLen) > cs {
			return nil, corruptf("header_length %d invalid", h.headerLen)
		}
		if int(h.headerLen) > len(buf) {
			return nil, corruptf("header_length %d past the end of the file", h.headerLen)
		}
		if h.headerLen > 104 {
			h.compression = buf[104]
		}
	}
	if h.refcountOrder > 6 {
		return nil, corruptf("refcount_order %d above 6", h.refcountOrder)
	}
	if h.backingOff != 0 {
		if h.backingLen > maxBackingName {
			return nil, corruptf("backing file name of %d bytes (limit %d)", h.backingLen, maxBackingName)
		}
		end := h.backingOff + uint64(h.backingLen)
		if h.backingOff < uint64(h.headerLen) || end > uint64(len(buf)) {
			return nil, corruptf("backing file name at %#x+%d outside the first cluster", h.backingOff, h.backingLen)
		}
		h.backingFile = string(buf[h.backingOff:end])
	}
	if unknown := h.incompat &^ incKnown; unknown != 0 {
		// Feature names come from the extensions; parse them first.
		_ = h.parseExtensions(buf)
		return nil, unsupportedf("unknown incompatible features: %s", h.featureList(0, unknown))
	}
	if err := h.parseExtensions(buf); err != nil {
		return nil, err
	}
	if h.incompat&incCompression != 0 {
		if h.compression == compressZlib {
			return nil, corruptf("compression type bit set with compression_type 0")
		}
	} else if h.compression != compressZlib {
		return nil, corruptf("compression_type %d without the compression type bit", h.compression)
	}
	if h.compression != compressZlib && h.compression != compressZstd {
		return nil, unsupportedf("compression_type %d", h.compression)
	}
	if h.extL2() && h.clusterBits < minExtL2Bits {
		return nil, corruptf("extended L2 entries with %d-byte clusters (need at least 16 KiB)", cs)
	}
	if err := h.checkTables(fileSize); err != nil {
		return nil, err
	}
	return h, nil
}

// checkTables bounds every table the header locates, before anything is
// allocated or looped over: the L1 table by what the virtual size needs,
// the refcount table by what the file's size needs, and all of them by
// the file. The errors name the header fields.
func (h *header) checkTables(fileSize int64) error {
	cs := h.clusterSize()
	if h.size > 1<<62 {
		return corruptf("size %d (the virtual size) absurd", h.size)
	}
	need := h.l1Needed()
	switch l1 := uint64(h.l1Size); {
	case l1 < need:
		return corruptf("l1_size %d too small: size %d needs %d L1 entries", l1, h.size, need)
	case l1 > 2*need+uint64(cs/8):
		return corruptf("l1_size %d is more than size %d needs (%d L1 entries, plus slack)", l1, h.size, need)
	case l1*8 > maxL1Bytes:
		return corruptf("l1_size %d too large: an L1 table above %d bytes", l1, maxL1Bytes)
	}
	if err := checkTable("L1 table (l1_table_offset, l1_size)", h.l1Off, uint64(h.l1Size)*8, cs, fileSize); err != nil {
		return err
	}
	// The refcount table must cover the file; qemu and vdisk grow it by
	// half or double it, so twice that and two clusters is plenty.
	rt := uint64(h.refTableClusters)
	perTable := uint64(cs/8) * uint64(cs*8/int64(h.refcountBits())) // clusters one table cluster covers
	rtNeed := (uint64(fileSize+cs-1)/uint64(cs) + perTable - 1) / perTable
	switch {
	case rt == 0:
		return corruptf("refcount_table_clusters is 0")
	case rt*uint64(cs) > maxRefTableBytes:
		return corruptf("refcount_table_clusters %d too large: a refcount table above %d bytes", rt, maxRefTableBytes)
	case rt > 2*rtNeed+2:
		return corruptf("refcount_table_clusters %d is more than a file of %d bytes needs (%d)", rt, fileSize, rtNeed)
	}
	if err := checkTable("refcount table (refcount_table_offset, refcount_table_clusters)", h.refTableOff, rt*uint64(cs), cs, fileSize); err != nil {
		return err
	}
	if h.nbSnapshots > maxSnapshots {
		return corruptf("nb_snapshots %d: more snapshots than %d", h.nbSnapshots, maxSnapshots)
	}
	if h.nbSnapshots > 0 {
		if err := checkTable("snapshot table (snapshots_offset, nb_snapshots)", h.snapshotsOff, uint64(h.nbSnapshots)*40, cs, fileSize); err != nil {
			return err
		}
	}
	if h.hasBitmaps {
		switch {
		case h.nbBitmaps == 0 || h.nbBitmaps > maxBitmaps:
			return corruptf("bitmaps extension: nb_bitmaps %d outside [1, %d]", h.nbBitmaps, maxBitmaps)
		case h.bitmapDirSize > maxBitmapDirBytes || h.bitmapDirSize < uint64(h.nbBitmaps)*24:
			return corruptf("bitmaps extension: bitmap_directory_size %d invalid for %d bitmaps", h.bitmapDirSize, h.nbBitmaps)
		}
		if err := checkTable("bitmap directory (bitmap_directory_offset, bitmap_directory_size)", h.bitmapDirOff, h.bitmapDirSize, cs, fileSize); err != nil {
			return err
		}
	}
	return nil
}

// checkTable validates a table's offset and length against the file.
func checkTable(what string, off, n uint64, cs int64, fileSize int64) error {
	if off%uint64(cs) != 0 {
		return corruptf("%s at %#x: not cluster aligned", what, off)
	}
	if off == 0 && n > 0 {
		return corruptf("%s at offset 0 overlaps the header", what)
	}
	if off > uint64(fileSize) || n > uint64(fileSize)-off {
		return corruptf("%s at %#x+%d past the end of the file (%d bytes)", what, off, n, fileSize)
	}
	return nil
}

// parseExtensions reads the header extensions that follow the header.
func (h *header) parseExtensions(buf []byte) error {
	if h.version < 3 && int64(len(buf)) < v2HeaderLen {
		return nil
	}
	end := uint64(len(buf))
	if h.backingOff != 0 && h.backingOff < end {
		end = h.backingOff
	}
	be := binary.BigEndian
	seen := map[uint32]bool{}
	for off := uint64(h.headerLen); ; {
		if off+8 > end {
			// v2 images may have no end marker when nothing follows.
			if h.version == 2 && off == uint64(h.headerLen) {
				return nil
			}
			return corruptf("header extension at %#x runs past the first cluster", off)
		}
		typ, n := be.Uint32(buf[off:]), uint64(be.Uint32(buf[off+4:]))
		off += 8
		if typ == extEnd {
			return nil
		}
		if n > end-off {
			return corruptf("header extension %#x of %d bytes runs past the first cluster", typ, n)
		}
		if seen[typ] && typ != 0 {
			return corruptf("header extension %#x appears twice", typ)
		}
		seen[typ] = true
		data := buf[off : off+n]
		switch typ {
		case extBackingFmt:
			h.backingFormat = string(data)
		case extFeatureNames:
			for i := 0; i+48 <= len(data) && len(h.features) < maxFeatureNames; i += 48 {
				name := string(data[i+2 : i+48])
				if k := strings.IndexByte(name, 0); k >= 0 {
					name = name[:k]
				}
				h.features = append(h.features, featureName{kind: data[i], bit: data[i+1], name: name})
			}
		case extDataFile:
			h.dataFile = string(data)
		case extBitmaps:
			if n < 24 {
				return corruptf("bitmaps extension of %d bytes (want 24)", n)
			}
			// qemu ignores the extension without the autoclear bit.
			h.hasBitmaps = h.autoclear&autoclearBitmaps != 0
			h.nbBitmaps = be.Uint32(data)
			h.bitmapDirSize = be.Uint64(data[8:])
			h.bitmapDirOff = be.Uint64(data[16:])
		case extCrypto:
			if n < 16 {
				return corruptf("encryption header extension of %d bytes (want 16)", n)
			}
			h.cryptoOff = be.Uint64(data)
			h.cryptoLen = be.Uint64(data[8:])
		}
		off += (n + 7) &^ 7
	}
}

// featureList names the bits of mask in feature table kind.
func (h *header) featureList(kind uint8, mask uint64) string {
	var parts []string
	for bit := range uint8(64) {
		if mask&(1<<bit) == 0 {
			continue
		}
		name := ""
		for _, f := range h.features {
			if f.kind == kind && f.bit == bit {
				name = f.name
			}
		}
		if name == "" {
			parts = append(parts, fmt.Sprintf("bit %d", bit))
		} else {
			parts = append(parts, fmt.Sprintf("bit %d (%q)", bit, name))
		}
	}
	return strings.Join(parts, ", ")
}
