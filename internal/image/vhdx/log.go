package vhdx

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"sort"

	"vdisk/internal/image"
	"vdisk/internal/image/blockmap"
)

// Log layout (MS-VHDX "Log").
const (
	logSector   = 4096
	logHdrSize  = 64
	logDescSize = 32
	sigLogEntry = 0x65676f6c // "loge"
	sigLogDesc  = 0x63736564 // "desc"
	sigLogZero  = 0x6f72657a // "zero"
	sigLogData  = 0x61746164 // "data"
	// maxLog bounds the log a replay reads (twice over, so that an entry
	// may wrap): Hyper-V and qemu make 1 MiB logs.
	maxLog = 16 << 20
	// maxReplayEnd bounds where replayed writes may reach: 64 TiB of data
	// plus room for the metadata.
	maxReplayEnd = maxSize + 1<<40
)

// logEntry is a valid log entry, with n descriptors.
type logEntry struct {
	pos, length       int64
	seq               uint64
	tail              int64
	flushed, lastFile int64
	n                 int64
}

// updates calls fn with each update of the valid entry e, in order: n
// bytes at file offset off, with the 4 KiB sector to write there (built
// in buf: the descriptor holds its first eight and last four bytes, a
// data sector the rest), or nil for zeroes.
func (e *logEntry) updates(log2x, buf []byte, fn func(off, n int64, sector []byte) error) error {
	le := binary.LittleEndian
	data := e.pos + (logHdrSize+logDescSize*e.n+logSector-1)/logSector*logSector
	for i := range e.n {
		d := log2x[e.pos+logHdrSize+logDescSize*i:]
		off, n, sector := int64(le.Uint64(d[16:])), int64(le.Uint64(d[8:])), []byte(nil)
		if le.Uint32(d) == sigLogDesc {
			le.PutUint64(buf, le.Uint64(d[8:]))
			copy(buf[8:4092], log2x[data+8:data+4092])
			le.PutUint32(buf[4092:], le.Uint32(d[4:]))
			n, sector, data = logSector, buf, data+logSector
		}
		if err := fn(off, n, sector); err != nil {
			return err
		}
	}
	return nil
}

// parseLogEntry returns the valid entry at pos of the log (given twice in
// a row, so an entry may wrap), or nil. The structure is checked before
// the checksum: an entry is exactly its descriptor sectors and data
// sectors, none of which starts like an entry, so no valid entry starts
// inside another and the checksums cover each byte of the log at most
// once.
func parseLogEntry(log2x []byte, pos int64, want guid) *logEntry {
	le := binary.LittleEndian
	logLen := int64(len(log2x) / 2)
	b := log2x[pos:]
	if le.Uint32(b) != sigLogEntry {
		return nil
	}
	length := int64(le.Uint32(b[8:]))
	if length < logSector || length%logSector != 0 || length > logLen {
		return nil
	}
	b = b[:length]
	var g guid
	copy(g[:], b[32:48])
	e := &logEntry{pos: pos, length: length, seq: le.Uint64(b[16:]), tail: int64(le.Uint32(b[12:])),
		flushed: int64(le.Uint64(b[48:])), lastFile: int64(le.Uint64(b[56:]))}
	n := int64(le.Uint32(b[24:]))
	e.n = n
	if g != want || e.seq == 0 || e.tail%logSector != 0 || e.tail >= logLen || n > length/logDescSize {
		return nil
	}
	data := (logHdrSize + logDescSize*n + logSector - 1) / logSector * logSector
	if data > length {
		return nil
	}
	for i := range n {
		at := logHdrSize + logDescSize*i
		d := b[at:]
		off := int64(le.Uint64(d[16:]))
		if le.Uint64(d[24:]) != e.seq || off%logSector != 0 || off < 0 {
			return nil
		}
		switch le.Uint32(d) {
		case sigLogZero:
			if zl := int64(le.Uint64(d[8:])); zl%logSector != 0 || zl < 0 {
				return nil
			}
		case sigLogDesc:
			if data+logSector > length {
				return nil
			}
			s := b[data:]
			if le.Uint32(s) != sigLogData || le.Uint32(s[4:]) != uint32(e.seq>>32) || le.Uint32(s[4092:]) != uint32(e.seq) {
				return nil
			}
			data += logSector
		default:
			return nil
		}
	}
	if data != length {
		return nil
	}
	if le.Uint32(b[4:]) != crc32.Update(crc32.Update(crc32.Update(0, castagnoli, b[:4]), castagnoli, []byte{0, 0, 0, 0}), castagnoli, b[8:]) {
		return nil
	}
	return e
}

// activeSequence finds the active sequence of the log (given twice in a
// row in log2x): the chain of entries, each the next sequence number,
// from the tail named by the entry with the highest sequence number for
// which that chain is complete. nil when the log holds none.
func activeSequence(log2x []byte, want guid) []*logEntry {
	logLen := int64(len(log2x) / 2)
	entries := map[int64]*logEntry{}
	var heads []*logEntry
	for pos := int64(0); pos < logLen; pos += logSector {
		if e := parseLogEntry(log2x, pos, want); e != nil {
			entries[pos] = e
			heads = append(heads, e)
		}
	}
	sort.Slice(heads, func(i, j int) bool { return heads[i].seq > heads[j].seq })
	for _, h := range heads {
		var chain []*logEntry
		for e := entries[h.tail]; e != nil && (len(chain) == 0 || e.seq == chain[len(chain)-1].seq+1); e = entries[(e.pos+e.length)%logLen] {
			if chain = append(chain, e); e == h {
				return chain
			}
		}
	}
	return nil
}

// replay applies the active sequence of the log to f (fsize bytes) and
// syncs it. It returns the file's new size.
func replay(f image.File, fsize int64, h *header) (int64, error) {
	if h.logLen > maxLog {
		return 0, fmt.Errorf("vhdx: log of %d bytes is larger than %d: %w", h.logLen, int64(maxLog), errUnsupported)
	}
	log2x := make([]byte, 2*h.logLen)
	if _, err := f.ReadAt(log2x[:h.logLen], h.logOff); err != nil {
		return 0, fmt.Errorf("vhdx: read log: %w", err)
	}
	copy(log2x[h.logLen:], log2x[:h.logLen])
	seq := activeSequence(log2x, h.logGUID)
	if seq == nil {
		return fsize, nil
	}
	head := seq[len(seq)-1]
	if head.lastFile > maxReplayEnd || head.flushed > maxReplayEnd {
		return 0, corruptf("log entry %d claims a file of %d bytes", head.seq, max(head.lastFile, head.flushed))
	}
	for _, e := range seq {
		if e.flushed > fsize {
			return 0, corruptf("log entry %d was written when the file had %d bytes, it has %d: truncated", e.seq, e.flushed, fsize)
		}
	}
	limit := max(fsize, head.lastFile)
	// Past dirty the file was extended here and reads as zeroes, so
	// zeroing it is left out; what is zeroed is bounded by a few times the
	// file, however often the log repeats itself.
	dirty, budget := fsize, 4*(fsize+h.logLen)
	buf := make([]byte, logSector)
	for _, e := range seq {
		err := e.updates(log2x, buf, func(off, n int64, sector []byte) error {
			if off > limit || n > limit-off {
				return corruptf("log entry %d writes [%#x, +%d) beyond the file's %d bytes", e.seq, off, n, limit)
			}
			if off < mib {
				return corruptf("log entry %d writes over the file identifier, headers or region tables at %#x", e.seq, off)
			}
			if off < h.logOff+h.logLen && h.logOff < off+n {
				return corruptf("log entry %d writes into the log itself at %#x", e.seq, off)
			}
			if end := off + n; end > fsize {
				if err := f.Truncate(end); err != nil {
					return fmt.Errorf("vhdx: replay log: %w", err)
				}
				fsize = end
			}
			var err error
			if sector != nil {
				_, err = f.WriteAt(sector, off)
				dirty = max(dirty, off+n)
			} else if z := min(off+n, dirty) - off; z > 0 {
				if budget -= z; budget < 0 {
					return corruptf("log entries zero more than %d bytes, four times the file and the log", 4*(fsize+h.logLen))
				}
				err = blockmap.ZeroFile(f, off, z, false)
			}
			if err != nil {
				return fmt.Errorf("vhdx: replay log entry %d at %#x: %w", e.seq, off, err)
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
	}
	if head.lastFile > fsize {
		end := (head.lastFile + mib - 1) / mib * mib
		if err := f.Truncate(end); err != nil {
			return 0, fmt.Errorf("vhdx: replay log: %w", err)
		}
		fsize = end
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("vhdx: sync after log replay: %w", err)
	}
	return fsize, nil
}
