package vhdx

import (
	"bytes"
	"encoding/binary"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
	"vdisk/internal/image/imagetest"
)

// FuzzLog searches arbitrary bytes, taken as a log, for its active
// sequence: never a panic, and every entry of a sequence found is the next
// sequence number of the one before, the last one's tail the first one's
// position.
func FuzzLog(f *testing.F) {
	g := mustGUID("11111111-2222-4333-8444-555555555555")
	sector := bytes.Repeat([]byte{7}, logSector)
	e1 := encodeLogEntry(3, 0, g, 1<<30, 1<<30, []testDesc{{off: 8 * mib, data: sector}, {off: 9 * mib, zeroLen: 8192}})
	e2 := encodeLogEntry(4, 0, g, 1<<30, 1<<30, []testDesc{{off: 10 * mib, data: sector}})
	f.Add(append(append([]byte(nil), e1...), e2...))
	f.Add(e1)
	f.Fuzz(func(t *testing.T, b []byte) {
		n := len(b) / logSector * logSector
		if n == 0 || n > 64*logSector {
			return
		}
		seq := activeSequence(append(bytes.Clone(b[:n]), b[:n]...), g)
		for i, e := range seq {
			if i > 0 && e.seq != seq[i-1].seq+1 {
				t.Fatalf("sequence numbers %d then %d", seq[i-1].seq, e.seq)
			}
		}
		if len(seq) > 0 && seq[len(seq)-1].tail != seq[0].pos {
			t.Fatalf("head's tail %d, first entry at %d", seq[len(seq)-1].tail, seq[0].pos)
		}
	})
}

// FuzzOpen applies arbitrary patches (4-byte offset into the first 5 MiB,
// 1-byte length, bytes) to a valid image and opens it: never a panic, hang
// or unbounded allocation; what opens reads and describes its extents.
func FuzzOpen(f *testing.F) {
	tmpl := template(f)
	f.Add([]byte{})
	f.Add([]byte{0, 0, 1, 0, 4, 1, 2, 3, 4})                        // header 1 damaged
	f.Add([]byte{0, 0, 0x20, 0, 8, 0, 0, 0x50, 0, 0, 0, 0, 6})      // BAT entry 0 moved
	f.Add([]byte{0, 0x01, 0, 0x30, 4, 0, 0, 0x30, 0})               // block size
	f.Add([]byte{0, 0, 0x10, 0, 8, 'l', 'o', 'g', 'e', 0, 0, 0, 0}) // a log entry signature
	// Each input's image is the template under its patches, in a
	// copy-on-write file: the 5 MiB template is never copied.
	patched := func(patches []byte) *imagetest.COWFile {
		f := imagetest.NewCOWFile("mem.vhdx", tmpl)
		for len(patches) >= 5 {
			off := int(binary.BigEndian.Uint32(patches)) % (5 * mib)
			n := int(patches[4])
			patches = patches[5:]
			n = min(n, len(patches), len(tmpl)-off)
			f.WriteAt(patches[:n], int64(off))
			patches = patches[n:]
		}
		return f
	}
	f.Fuzz(func(t *testing.T, patches []byte) {
		image.InfoOf(patched(patches), Name)
		image.CheckOf(patched(patches), Name, image.CheckOptions{})
		d, err := image.OpenFile(patched(patches), image.OpenOptions{Format: Name, NoBacking: true})
		if err != nil {
			return
		}
		defer d.Close()
		n := min(d.Size(), 1<<20)
		d.ReadAt(make([]byte, n), 0)
		blockdev.Extents(d, 0, d.Size())
		imagetest.CheckMap(t, d, 0, n)
	})
}
