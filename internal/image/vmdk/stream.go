package vmdk

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"fmt"
	"io"
	"path/filepath"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// StreamOptimized is the subformat WriteStreamOptimized makes.
const StreamOptimized = "streamOptimized"

// Stream-optimized markers (the type field of a metadata marker).
const (
	markerEOS    = 0
	markerGT     = 1
	markerGD     = 2
	markerFooter = 3
)

// writeStreamOptimized writes the content of src as a new
// stream-optimized VMDK into f, an empty file, in one sequential pass:
// each grain that is not all zeroes is compressed (zlib) behind a grain
// marker, each grain table and then the grain directory behind their
// markers, and the header again as a footer, as VMware's streamOptimized
// subformat lays it out. Ranges src reports as zero through Extents are
// skipped without reading. grain is the grain size in bytes (0 means
// DefaultGrainSize). The result is read by Open (read-only), qemu and
// VMware.
func writeStreamOptimized(f image.File, src blockdev.Device, grain int64) error {
	grain, err := grainSize(grain)
	if err != nil {
		return err
	}
	size := src.Size()
	sectors := (size + sectorSize - 1) / sectorSize
	if sectors == 0 || sectors > maxSectors {
		return fmt.Errorf("vmdk: size %d: want 1 byte to 64 TiB", size)
	}
	w := &streamWriter{w: bufio.NewWriterSize(io.NewOffsetWriter(f, 0), 1<<20)}
	gs := grain / sectorSize
	const gtes = 512
	gtCount := (sectors + gtes*gs - 1) / (gtes * gs)
	d := &descriptor{version: 1, cid: newCID(), parentCID: noParent, createType: StreamOptimized,
		extents: []extentLine{{access: "RW", sectors: sectors, kind: kindSparse, file: filepath.Base(f.Name())}}, ddb: ddb(sectors)}
	desc := d.encode()
	descSectors := int64(embeddedDescSectors)
	overhead := (1 + descSectors + gs - 1) / gs * gs
	head := streamHeader(sectors, gs, descSectors, gdAtEnd, overhead)
	first := make([]byte, overhead*sectorSize)
	copy(first, head)
	copy(first[sectorSize:], desc)
	w.write(first)

	gd := make([]uint32, gtCount)
	buf := make([]byte, grain)
	var zw *zlib.Writer
	for gt := int64(0); gt < gtCount && w.err == nil; gt++ {
		table := make([]uint32, gtes)
		used := false
		for i := int64(0); i < gtes; i++ {
			off := (gt*gtes + i) * grain
			if off >= size {
				break
			}
			n := min(grain, size-off)
			zero, err := isZeroRange(src, off, n)
			if err != nil {
				return err
			}
			if zero {
				continue
			}
			clear(buf)
			if _, err := src.ReadAt(buf[:n], off); err != nil {
				return fmt.Errorf("vmdk: read source at %d: %w", off, err)
			}
			if blockdev.IsZero(buf[:n]) {
				continue
			}
			var comp bytes.Buffer
			comp.Write(make([]byte, 12))
			if zw == nil {
				zw = zlib.NewWriter(&comp)
			} else {
				zw.Reset(&comp)
			}
			zw.Write(buf)
			zw.Close()
			c := comp.Bytes()
			binary.LittleEndian.PutUint64(c, uint64(off/sectorSize))
			binary.LittleEndian.PutUint32(c[8:], uint32(len(c)-12))
			table[i] = uint32(w.pos / sectorSize)
			w.write(c)
			w.pad()
			used = true
		}
		if used {
			raw := make([]byte, gtes*4)
			for i, e := range table {
				binary.LittleEndian.PutUint32(raw[4*i:], e)
			}
			w.marker(gtes*4/sectorSize, markerGT)
			gd[gt] = uint32(w.pos / sectorSize)
			w.write(raw)
		}
	}
	raw := make([]byte, (gtCount*4+sectorSize-1)/sectorSize*sectorSize)
	for i, e := range gd {
		binary.LittleEndian.PutUint32(raw[4*i:], e)
	}
	w.marker(int64(len(raw))/sectorSize, markerGD)
	gdOff := w.pos / sectorSize
	w.write(raw)
	w.marker(1, markerFooter)
	w.write(streamHeader(sectors, gs, descSectors, uint64(gdOff), overhead))
	w.marker(0, markerEOS)
	if w.err == nil {
		w.err = w.w.Flush()
	}
	if w.err == nil {
		w.err = f.Sync()
	}
	if w.err != nil {
		return fmt.Errorf("vmdk: write %s: %w", f.Name(), w.err)
	}
	if w.pos/sectorSize > 0xffffffff {
		return fmt.Errorf("vmdk: stream-optimized file of %d bytes is too large for its tables", w.pos)
	}
	return nil
}

// isZeroRange reports whether src says [off, off+n) reads as zeroes.
func isZeroRange(src blockdev.Device, off, n int64) (bool, error) {
	for end := off + n; off < end; {
		ext, err := blockdev.Extents(src, off, end-off)
		if err != nil {
			return false, fmt.Errorf("vmdk: extents of the source at %d: %w", off, err)
		}
		for _, e := range ext {
			if e.Flags&blockdev.ExtentZero == 0 {
				return false, nil
			}
			off = e.Off + e.Len
		}
	}
	return true, nil
}

// streamHeader returns the header sector of a stream-optimized extent.
func streamHeader(sectors, grain, descSectors int64, gdOff uint64, overhead int64) []byte {
	h := &sparseHeader{version: 3, flags: flagNLDetect | flagCompressed | flagMarkers, capacity: sectors, grain: grain,
		descOff: 1, descSize: descSectors, gtes: 512, gdOff: gdOff, overhead: overhead, compressAlgo: compressDeflate}
	return h.encode()
}

// streamWriter writes sequentially, remembering its position and the
// first error.
type streamWriter struct {
	w   *bufio.Writer
	pos int64
	err error
}

func (s *streamWriter) write(b []byte) {
	if s.err != nil {
		return
	}
	n, err := s.w.Write(b)
	s.pos += int64(n)
	s.err = err
}

// pad fills up to the next sector boundary.
func (s *streamWriter) pad() {
	if r := s.pos % sectorSize; r != 0 {
		s.write(make([]byte, sectorSize-r))
	}
}

// marker writes a metadata marker sector: val sectors of metadata of type
// typ follow.
func (s *streamWriter) marker(val int64, typ uint32) {
	b := make([]byte, sectorSize)
	binary.LittleEndian.PutUint64(b, uint64(val))
	binary.LittleEndian.PutUint32(b[12:], typ)
	s.write(b)
}
