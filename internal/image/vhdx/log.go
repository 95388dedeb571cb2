package vhdx

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"sort"

	"golang.org/x/sys/unix"
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
	// maxReplayEnd bounds where replayed writes may reach: 64 TiB of data
	// plus room for the metadata.
	maxReplayEnd = maxSize + 1<<40
)

// logDesc is one update of a log entry: a 4 KiB sector of data, or a
// range of zeroes.
type logDesc struct {
	fileOff int64
	zeroLen int64  // zero descriptors
	sector  []byte // data descriptors: the full 4 KiB to write
}

// logEntry is a valid log entry.
type logEntry struct {
	pos, length       int64
	seq               uint64
	tail              int64
	flushed, lastFile int64
	descs             []logDesc
}

// parseLogEntry returns the valid entry at pos of the log (given twice in
// a row, so an entry may wrap), or nil.
func parseLogEntry(log2x []byte, logLen, pos int64, want guid) *logEntry {
	le := binary.LittleEndian
	b := log2x[pos:]
	if le.Uint32(b) != sigLogEntry {
		return nil
	}
	length := int64(le.Uint32(b[8:]))
	if length < logSector || length%logSector != 0 || length > logLen {
		return nil
	}
	b = b[:length]
	if le.Uint32(b[4:]) != crc32.Update(crc32.Update(crc32.Update(0, castagnoli, b[:4]), castagnoli, []byte{0, 0, 0, 0}), castagnoli, b[8:]) {
		return nil
	}
	var g guid
	copy(g[:], b[32:48])
	e := &logEntry{pos: pos, length: length, seq: le.Uint64(b[16:]), tail: int64(le.Uint32(b[12:])),
		flushed: int64(le.Uint64(b[48:])), lastFile: int64(le.Uint64(b[56:]))}
	n := int64(le.Uint32(b[24:]))
	if g != want || e.seq == 0 || e.tail%logSector != 0 || e.tail >= logLen {
		return nil
	}
	descArea := (logHdrSize + logDescSize*n + logSector - 1) / logSector * logSector
	if n > logLen/logDescSize || descArea > length {
		return nil
	}
	data := descArea
	for i := range n {
		d := b[logHdrSize+logDescSize*i:]
		off := int64(le.Uint64(d[16:]))
		if le.Uint64(d[24:]) != e.seq || off%logSector != 0 || off < 0 {
			return nil
		}
		switch le.Uint32(d) {
		case sigLogZero:
			zl := int64(le.Uint64(d[8:]))
			if zl%logSector != 0 || zl < 0 {
				return nil
			}
			e.descs = append(e.descs, logDesc{fileOff: off, zeroLen: zl})
		case sigLogDesc:
			if data+logSector > length {
				return nil
			}
			s := b[data : data+logSector]
			data += logSector
			if le.Uint32(s) != sigLogData || le.Uint32(s[4:]) != uint32(e.seq>>32) || le.Uint32(s[4092:]) != uint32(e.seq) {
				return nil
			}
			sector := make([]byte, logSector)
			le.PutUint64(sector, le.Uint64(d[8:]))
			copy(sector[8:4092], s[8:4092])
			le.PutUint32(sector[4092:], le.Uint32(d[4:]))
			e.descs = append(e.descs, logDesc{fileOff: off, sector: sector})
		default:
			return nil
		}
	}
	return e
}

// activeSequence finds the log's active sequence: the chain of entries,
// each the next sequence number, from the tail named by the entry with the
// highest sequence number for which that chain is complete. nil when the
// log holds none.
func activeSequence(log []byte, want guid) []*logEntry {
	logLen := int64(len(log))
	log2x := append(append(make([]byte, 0, 2*len(log)), log...), log...)
	entries := map[int64]*logEntry{}
	var heads []*logEntry
	for pos := int64(0); pos < logLen; pos += logSector {
		if e := parseLogEntry(log2x, logLen, pos, want); e != nil {
			entries[pos] = e
			heads = append(heads, e)
		}
	}
	sort.Slice(heads, func(i, j int) bool { return heads[i].seq > heads[j].seq })
	for _, h := range heads {
		var chain []*logEntry
		pos := h.tail
		for steps := int64(0); steps <= logLen/logSector; steps++ {
			e := entries[pos]
			if e == nil || (len(chain) > 0 && e.seq != chain[len(chain)-1].seq+1) {
				break
			}
			chain = append(chain, e)
			if e == h {
				return chain
			}
			pos = (pos + e.length) % logLen
		}
	}
	return nil
}

// replay applies the active sequence of the log to f (fsize bytes) and
// syncs it. It returns the file's new size.
func replay(f *os.File, fsize int64, h *header) (int64, error) {
	if h.logLen > maxLog {
		return 0, fmt.Errorf("vhdx: log of %d bytes is larger than %d: %w", h.logLen, int64(maxLog), errUnsupported)
	}
	log := make([]byte, h.logLen)
	if _, err := f.ReadAt(log, h.logOff); err != nil {
		return 0, fmt.Errorf("vhdx: read log: %w", err)
	}
	seq := activeSequence(log, h.logGUID)
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
	for _, e := range seq {
		for _, d := range e.descs {
			n := d.zeroLen
			if d.sector != nil {
				n = logSector
			}
			if d.fileOff > limit || n > limit-d.fileOff {
				return 0, corruptf("log entry %d writes [%#x, +%d) beyond the file's %d bytes", e.seq, d.fileOff, n, limit)
			}
			if d.fileOff < mib {
				return 0, corruptf("log entry %d writes over the file identifier, headers or region tables at %#x", e.seq, d.fileOff)
			}
			if d.fileOff < h.logOff+h.logLen && h.logOff < d.fileOff+n {
				return 0, corruptf("log entry %d writes into the log itself at %#x", e.seq, d.fileOff)
			}
			if end := d.fileOff + n; end > fsize {
				if err := f.Truncate(end); err != nil {
					return 0, fmt.Errorf("vhdx: replay log: %w", err)
				}
				fsize = end
			}
			var err error
			if d.sector != nil {
				_, err = f.WriteAt(d.sector, d.fileOff)
			} else if n > 0 {
				err = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, d.fileOff, n)
				if err != nil && n <= 64<<20 {
					_, err = f.WriteAt(make([]byte, n), d.fileOff)
				}
			}
			if err != nil {
				return 0, fmt.Errorf("vhdx: replay log entry %d at %#x: %w", e.seq, d.fileOff, err)
			}
		}
	}
	if head.lastFile > fsize {
		end := (head.lastFile + mib - 1) / mib * mib
		if err := f.Truncate(end); err != nil {
			return 0, fmt.Errorf("vhdx: replay log: %w", err)
		}
		fsize = end
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return 0, fmt.Errorf("vhdx: sync after log replay: %w", err)
	}
	return fsize, nil
}
