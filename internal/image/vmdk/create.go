package vmdk

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strings"

	"vdisk/internal/image"
)

// Create defaults and limits.
const (
	// DefaultGrainSize is the grain size Create uses (64 KiB, as qemu).
	DefaultGrainSize = 64 << 10
	// splitSize is the extent size of twoGbMaxExtent disks.
	splitSize = 2 << 30
	// embeddedDescSectors is the room for a monolithic sparse disk's
	// descriptor.
	embeddedDescSectors = 20
)

// Subformats Create makes.
const (
	MonolithicSparse     = "monolithicSparse"
	MonolithicFlat       = "monolithicFlat"
	TwoGbMaxExtentSparse = "twoGbMaxExtentSparse"
	TwoGbMaxExtentFlat   = "twoGbMaxExtentFlat"
)

// createFile writes a new VMDK into f, an empty file (the registry's
// CreateFile). opt.Options may set subformat (monolithicSparse, the
// default, monolithicFlat, twoGbMaxExtentSparse or twoGbMaxExtentFlat);
// the extent files of the last three are made beside f through
// opt.Names. opt.ClusterSize sets the grain size of sparse extents (a
// power of two from 4 KiB to 1 MiB; default 64 KiB). opt.BackingFile
// names a VMDK parent, opened through opt.Names (its size is used when
// opt.Size is zero) and recorded as given.
func createFile(f image.File, opt image.CreateOptions) error {
	if opt.Names == nil {
		opt.Names = image.LocalNames{}
	}
	sub := MonolithicSparse
	for k, v := range opt.Options {
		switch {
		case k == "subformat" && (v == MonolithicSparse || v == MonolithicFlat || v == TwoGbMaxExtentSparse || v == TwoGbMaxExtentFlat):
			sub = v
		case k == "subformat":
			return fmt.Errorf("vmdk: subformat %q: want %s, %s, %s or %s", v, MonolithicSparse, MonolithicFlat, TwoGbMaxExtentSparse, TwoGbMaxExtentFlat)
		default:
			return fmt.Errorf("vmdk: unknown option %q (known: subformat)", k)
		}
	}
	grain, err := grainSize(opt.ClusterSize)
	if err != nil {
		return err
	}
	d := &descriptor{version: 1, parentCID: noParent, createType: sub, cid: newCID()}
	size := opt.Size
	if opt.BackingFile != "" {
		if opt.BackingFormat != "" && opt.BackingFormat != Name {
			return fmt.Errorf("vmdk: parent format %q: a VMDK's parent must be a VMDK: %w", opt.BackingFormat, errUnsupported)
		}
		pd, err := image.OpenBacking(f, image.Backing{Name: opt.BackingFile, Format: Name, What: "parent"},
			image.OpenOptions{ReadOnly: true, Names: opt.Names})
		if err != nil {
			return fmt.Errorf("vmdk: %w", err)
		}
		d.parentCID, d.parentHint = pd.(*Image).desc.cid, opt.BackingFile
		if size == 0 {
			size = pd.Size()
		}
		pd.Close()
	}
	size = (size + sectorSize - 1) &^ (sectorSize - 1)
	sectors := size / sectorSize
	if sectors <= 0 || sectors > maxSectors {
		return fmt.Errorf("vmdk: size %d: want 1 byte to 64 TiB", opt.Size)
	}
	d.ddb = ddb(sectors)
	if sub == MonolithicSparse {
		d.extents = []extentLine{{access: "RW", sectors: sectors, kind: kindSparse, file: filepath.Base(f.Name())}}
		return writeSparse(f, sectors, grain/sectorSize, d.encode())
	}
	base := strings.TrimSuffix(filepath.Base(f.Name()), ".vmdk")
	for i, left := 0, sectors; left > 0; i++ {
		n := left
		if sub != MonolithicFlat {
			n = min(left, splitSize/sectorSize)
		}
		l := extentLine{access: "RW", sectors: n, kind: kindFlat, file: fmt.Sprintf("%s-f%03d.vmdk", base, i+1)}
		switch sub {
		case MonolithicFlat:
			l.file = base + "-flat.vmdk"
		case TwoGbMaxExtentSparse:
			l.kind, l.file = kindSparse, fmt.Sprintf("%s-s%03d.vmdk", base, i+1)
		}
		d.extents = append(d.extents, l)
		ef, err := opt.Names.Create(f, l.file)
		if err != nil {
			return fmt.Errorf("vmdk: extent %s: %w", l.file, err)
		}
		if l.kind == kindSparse {
			err = writeSparse(ef, n, grain/sectorSize, "")
		} else {
			err = writeNew(ef, nil, n*sectorSize)
		}
		if cerr := ef.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("vmdk: create %s: %w", ef.Name(), cerr)
		}
		if err != nil {
			return err
		}
		left -= n
	}
	return writeNew(f, []byte(d.encode()), -1)
}

// grainSize checks a grain size in bytes (0 means DefaultGrainSize).
func grainSize(grain int64) (int64, error) {
	if grain == 0 {
		grain = DefaultGrainSize
	}
	if grain < 4096 || grain > 1<<20 || grain&(grain-1) != 0 {
		return 0, fmt.Errorf("vmdk: grain size %d: want a power of two from 4 KiB to 1 MiB", grain)
	}
	return grain, nil
}

// ddb is the disk data base of a new disk of sectors sectors.
func ddb(sectors int64) []string {
	return []string{`ddb.virtualHWVersion = "4"`, fmt.Sprintf(`ddb.geometry.cylinders = "%d"`, min(sectors/(16*63), 16383)),
		`ddb.geometry.heads = "16"`, `ddb.geometry.sectors = "63"`, `ddb.adapterType = "ide"`}
}

// newCID returns a random content id.
func newCID() string {
	var b [4]byte
	rand.Read(b[:])
	if b == [4]byte{0xff, 0xff, 0xff, 0xff} {
		b[0] = 0
	}
	return hex.EncodeToString(b[:])
}

// writeSparse writes an empty sparse extent of sectors sectors with
// grain-sector grains into the new file f, in qemu's layout: header,
// descriptor, redundant directory and tables, directory and tables. The
// tables are left as holes (empty), so only the directories are built in
// memory.
func writeSparse(f image.File, sectors, grain int64, desc string) error {
	const gtes = 512
	h := &sparseHeader{version: 1, flags: flagNLDetect | flagRGD, capacity: sectors, grain: grain, gtes: gtes, rgdOff: 1}
	if desc != "" {
		if int64(len(desc)) > embeddedDescSectors*sectorSize {
			return fmt.Errorf("vmdk: descriptor of %d bytes does not fit %d sectors", len(desc), embeddedDescSectors)
		}
		h.descOff, h.descSize, h.rgdOff = 1, embeddedDescSectors, 1+embeddedDescSectors
	}
	gtCount := (sectors + gtes*grain - 1) / (gtes * grain)
	gdSectors := (gtCount*4 + sectorSize - 1) / sectorSize
	gtSectors := int64(gtes * 4 / sectorSize)
	h.gdOff = uint64(h.rgdOff + gdSectors + gtCount*gtSectors)
	end := int64(h.gdOff) + gdSectors + gtCount*gtSectors
	h.overhead = (end + grain - 1) / grain * grain
	dir := make([]byte, gdSectors*sectorSize)
	for _, at := range []int64{h.rgdOff, int64(h.gdOff)} {
		for i := range gtCount {
			binary.LittleEndian.PutUint32(dir[4*i:], uint32(at+gdSectors+i*gtSectors))
		}
		if _, err := f.WriteAt(dir, at*sectorSize); err != nil {
			return fmt.Errorf("vmdk: create %s: %w", f.Name(), err)
		}
	}
	head := make([]byte, h.rgdOff*sectorSize)
	copy(head, h.encode())
	copy(head[sectorSize:], desc)
	return writeNew(f, head, h.overhead*sectorSize)
}

// writeNew writes buf at the start of the new file f, sizes it size
// (len(buf) when size is negative) and syncs it.
func writeNew(f image.File, buf []byte, size int64) error {
	_, err := f.WriteAt(buf, 0)
	if err == nil && size >= 0 {
		err = f.Truncate(size)
	}
	if err == nil {
		err = f.Sync()
	}
	if err != nil {
		return fmt.Errorf("vmdk: create %s: %w", f.Name(), err)
	}
	return nil
}
