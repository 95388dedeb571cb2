package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"syscall"

	"vdisk/internal/image"
)

// ErrHeaderFull is returned by SetBacking when the new backing file name
// and the header extensions do not fit in the first cluster (qemu:
// "No space left in the file header").
var ErrHeaderFull = fmt.Errorf("qcow2: no space left in the file header: %w", syscall.ENOSPC)

// SetBacking records name, in format, as the image's backing file; name
// "" removes the backing file (and format must be ""). It changes the
// header as qemu's qcow2_change_backing_file does: every other header
// field and extension stays as it is (unknown extensions too), the
// backing-format extension is replaced, added or removed (it comes
// first), and the name follows the extensions.
//
// It flushes the image first, so whatever the caller wrote (the clusters
// vdisk rebase copies in) is on disk before the header names another
// backing file. The new header then goes out in one write of the first
// bytes of the file, followed by a sync: a crash, kill -9 included,
// leaves the old header or the new one, never a mix (a power loss too,
// on storage that does not tear a write of that size: the header of an
// image qemu or vdisk made is well under 4 KiB). The open image keeps
// reading from the backing file it was opened with; reopen it to follow
// the new one.
func (img *Image) SetBacking(name, format string) error {
	if name == "" && format != "" {
		return fmt.Errorf("qcow2: a backing format (%s) without a backing file", format)
	}
	if name != "" {
		if err := image.CheckName("backing file", name); err != nil {
			return err
		}
	}
	if len(name) > maxBackingName {
		return fmt.Errorf("qcow2: backing file name of %d bytes (limit %d): %w", len(name), maxBackingName, ErrHeaderFull)
	}
	if err := img.Flush(); err != nil {
		return err
	}
	unlock, err := img.exclusive()
	if err != nil {
		return err
	}
	defer unlock()
	h := img.h
	old := make([]byte, min(img.cs, img.fileEnd))
	if _, err := img.f.ReadAt(old, 0); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("qcow2: read header: %w", err)
	}
	buf, end, err := headerWithBacking(old, h, img.cs, name, format)
	if err != nil {
		return err
	}
	oldEnd := int64(h.headerLen)
	if h.backingOff != 0 {
		oldEnd = max(oldEnd, int64(h.backingOff)+int64(h.backingLen))
	}
	if _, err := img.f.WriteAt(buf[:max(end, oldEnd)], 0); err != nil {
		return fmt.Errorf("qcow2: write header: %w", err)
	}
	if err := img.sync(); err != nil {
		return err
	}
	h.backingFile, h.backingFormat = name, format
	h.backingOff, h.backingLen = binary.BigEndian.Uint64(buf[8:]), binary.BigEndian.Uint32(buf[16:])
	return nil
}

// headerWithBacking returns the first cluster (cs bytes) of an image whose
// header is old, with name and format as its backing file, and how many
// of its bytes are header (past them it is zeroes).
func headerWithBacking(old []byte, h *header, cs int64, name, format string) ([]byte, int64, error) {
	be := binary.BigEndian
	buf := make([]byte, cs)
	copy(buf, old[:h.headerLen])
	// The extensions as they are, but the backing format's.
	type ext struct {
		typ  uint32
		data []byte
	}
	var exts []ext
	if name != "" && format != "" {
		exts = append(exts, ext{extBackingFmt, []byte(format)})
	}
	limit := uint64(len(old))
	if h.backingOff != 0 && h.backingOff < limit {
		limit = h.backingOff
	}
	for off := uint64(h.headerLen); off+8 <= limit; {
		typ, n := be.Uint32(old[off:]), uint64(be.Uint32(old[off+4:]))
		off += 8
		if typ == extEnd || n > limit-off {
			break // the end (parseHeader refused a bad length)
		}
		if typ != extBackingFmt {
			exts = append(exts, ext{typ, old[off : off+n]})
		}
		off += (n + 7) &^ 7
	}
	pos := int64(h.headerLen)
	for _, e := range exts {
		need := 8 + (int64(len(e.data))+7)&^7
		if pos+need+8 > cs {
			return nil, 0, ErrHeaderFull
		}
		be.PutUint32(buf[pos:], e.typ)
		be.PutUint32(buf[pos+4:], uint32(len(e.data)))
		copy(buf[pos+8:], e.data)
		pos += need
	}
	pos += 8 // the end marker: zero type and length
	be.PutUint64(buf[8:], 0)
	be.PutUint32(buf[16:], 0)
	if name != "" {
		if pos+int64(len(name)) > cs {
			return nil, 0, ErrHeaderFull
		}
		be.PutUint64(buf[8:], uint64(pos))
		be.PutUint32(buf[16:], uint32(len(name)))
		copy(buf[pos:], name)
		pos += int64(len(name))
	}
	return buf, pos, nil
}
