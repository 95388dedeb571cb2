package vhdx

import (
	"encoding/binary"
	"hash/crc32"
	"os"
	"testing"
)

// Test helpers that build what vdisk itself never writes: log entries
// (vdisk orders its updates instead of logging them).

// testDesc is one update of a crafted log entry.
type testDesc struct {
	off     int64
	zeroLen int64  // a zero descriptor when data is nil
	data    []byte // 4 KiB
}

// encodeLogEntry builds a log entry.
func encodeLogEntry(seq uint64, tail uint32, g guid, flushed, last int64, descs []testDesc) []byte {
	le := binary.LittleEndian
	area := (logHdrSize + logDescSize*len(descs) + logSector - 1) / logSector * logSector
	b := make([]byte, area)
	for i, d := range descs {
		e := b[logHdrSize+logDescSize*i:]
		le.PutUint64(e[16:], uint64(d.off))
		le.PutUint64(e[24:], seq)
		if d.data == nil {
			le.PutUint32(e, sigLogZero)
			le.PutUint64(e[8:], uint64(d.zeroLen))
			continue
		}
		le.PutUint32(e, sigLogDesc)
		le.PutUint32(e[4:], le.Uint32(d.data[4092:]))
		le.PutUint64(e[8:], le.Uint64(d.data))
		s := make([]byte, logSector)
		le.PutUint32(s, sigLogData)
		le.PutUint32(s[4:], uint32(seq>>32))
		copy(s[8:4092], d.data[8:4092])
		le.PutUint32(s[4092:], uint32(seq))
		b = append(b, s...)
	}
	le.PutUint32(b, sigLogEntry)
	le.PutUint32(b[8:], uint32(len(b)))
	le.PutUint32(b[12:], tail)
	le.PutUint64(b[16:], seq)
	le.PutUint32(b[24:], uint32(len(descs)))
	copy(b[32:], g[:])
	le.PutUint64(b[48:], uint64(flushed))
	le.PutUint64(b[56:], uint64(last))
	le.PutUint32(b[4:], crc32.Update(crc32.Update(crc32.Update(0, castagnoli, b[:4]), castagnoli, []byte{0, 0, 0, 0}), castagnoli, b[8:]))
	return b
}

// setLogGUID writes the current header again, one sequence number higher
// and with log GUID g, into the other slot.
func setLogGUID(t *testing.T, path string, g guid) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	hs, cur, err := readHeaders(f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	h := *hs[cur]
	h.seq++
	h.logGUID = g
	off := int64(header2Off)
	if cur == 1 {
		off = header1Off
	}
	if _, err := f.WriteAt(h.encode(), off); err != nil {
		t.Fatal(err)
	}
}
