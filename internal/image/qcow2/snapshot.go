package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// snapshot is one entry of the snapshot table.
type snapshot struct {
	l1Off  uint64
	l1Size uint32
	extra  int // bytes of extra data
	info   image.Snapshot
	raw    []byte // the entry as stored, with its padding
}

// errShortTable says the snapshot table runs past the bytes read.
var errShortTable = errors.New("runs past the snapshot table")

// readSnapshots reads the snapshot table: first a guess at its size from
// the entry count, more only when the entries are longer, never past the
// file or maxSnapshotTableBytes. Every snapshot's L1 table must lie in the
// file.
func readSnapshots(f io.ReaderAt, h *header, fileSize int64) ([]snapshot, error) {
	if h.nbSnapshots == 0 {
		return nil, nil
	}
	limit := min(fileSize-int64(h.snapshotsOff), maxSnapshotTableBytes)
	for n := min(limit, int64(h.nbSnapshots)*128+4096); ; n = min(limit, 4*n) {
		buf := make([]byte, n)
		if _, err := f.ReadAt(buf, int64(h.snapshotsOff)); err != nil && !errors.Is(err, io.EOF) {
			return nil, corruptf("read snapshot table: %v", err)
		}
		snaps, err := parseSnapshots(buf, h)
		if errors.Is(err, errShortTable) && n < limit {
			continue
		}
		if err != nil {
			return nil, err
		}
		// Each snapshot has an L1 table of its own clusters, so together
		// they fit in the file: this bounds the work of walking them.
		total := int64(0)
		for _, s := range snaps {
			total += int64(s.l1Size) * 8
			if total > fileSize {
				return nil, corruptf("snapshot L1 tables of more than %d bytes in all in a file of %d bytes", total, fileSize)
			}
			if err := checkTable(fmt.Sprintf("snapshot %q L1 table", s.info.Name), s.l1Off, uint64(s.l1Size)*8, h.clusterSize(), fileSize); err != nil {
				return nil, err
			}
		}
		return snaps, nil
	}
}

// parseSnapshots decodes h.nbSnapshots entries from buf.
func parseSnapshots(buf []byte, h *header) ([]snapshot, error) {
	be := binary.BigEndian
	var out []snapshot
	pos := 0
	for i := range int(h.nbSnapshots) {
		if len(buf)-pos < 40 {
			return nil, fmt.Errorf("qcow2: snapshot %d %w: %w", i, errShortTable, blockdev.ErrCorrupt)
		}
		b := buf[pos:]
		s := snapshot{l1Off: be.Uint64(b), l1Size: be.Uint32(b[8:])}
		s.extra = int(be.Uint32(b[36:]))
		idLen, nameLen := int(be.Uint16(b[12:])), int(be.Uint16(b[14:]))
		s.info.DateSec = int64(be.Uint32(b[16:]))
		s.info.DateNsec = int64(be.Uint32(b[20:]))
		s.info.VMClockNsec = int64(be.Uint64(b[24:]))
		s.info.VMStateSize = uint64(be.Uint32(b[32:]))
		extra := int(be.Uint32(b[36:]))
		total := 40 + extra + idLen + nameLen
		if extra > 1024 {
			return nil, corruptf("snapshot %d: %d bytes of extra data (limit 1024)", i, extra)
		}
		if total > len(b) {
			return nil, fmt.Errorf("qcow2: snapshot %d of %d bytes %w: %w", i, total, errShortTable, blockdev.ErrCorrupt)
		}
		if extra >= 8 {
			s.info.VMStateSize = be.Uint64(b[40:])
		}
		if extra >= 16 {
			s.info.VirtualSize = int64(be.Uint64(b[48:]))
		}
		s.info.ID = string(b[40+extra : 40+extra+idLen])
		s.info.Name = string(b[40+extra+idLen : total])
		if s.l1Off%uint64(h.clusterSize()) != 0 || uint64(s.l1Size)*8 > maxL1Bytes {
			return nil, corruptf("snapshot %q L1 table at %#x (%d entries) invalid", s.info.Name, s.l1Off, s.l1Size)
		}
		s.raw = b[:min(len(b), (total+7)&^7)]
		out = append(out, s)
		pos += (total + 7) &^ 7
	}
	return out, nil
}
