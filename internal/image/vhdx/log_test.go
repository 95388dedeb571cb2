package vhdx

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"vdisk/internal/image/imagetest"

	"vdisk/internal/image"
)

// TestLogReplay crafts images left dirty by a crashed writer: a log with a
// sequence of two entries (a data sector rewritten in place; a new block
// allocated through a BAT sector update, written, and a range zeroed).
// qemu-img check -r all replays a copy; vdisk must refuse a read-only
// open, replay on a read-write open, and then read what qemu reads, which
// is what the log says. A torn second entry (bad checksum) leaves only the
// first applied.
func TestLogReplay(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	for _, tc := range []struct {
		name string
		torn bool
	}{{"two-entries", false}, {"torn-second-entry", true}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "dirty.vhdx")
			const bs = 1 << 20
			if err := createPath(p, image.CreateOptions{Format: Name, Size: 9 << 20, ClusterSize: bs}); err != nil {
				t.Fatal(err)
			}
			d, err := openPath(p, image.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			ref := make([]byte, 9<<20)
			imagetest.RandomWrites(t, blockdev0(d), ref, 21, 10, 200<<10)
			for _, off := range []int64{0, 3 << 20} { // make sure blocks 0 and 3 exist
				if _, err := d.WriteAt([]byte{0x5a}, off+7); err != nil {
					t.Fatal(err)
				}
				ref[off+7] = 0x5a
			}
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			img := loadPath(t, p)
			blockOff := func(b int64) int64 { e, _ := img.Lookup(b); return e.Off }
			st, _ := os.Stat(p)
			fsize := st.Size()

			// Entry 1: overwrite the sector at guest 8 KiB of block 0.
			a := bytes.Repeat([]byte{0xa1}, logSector)
			copy(a, "leading!")
			copy(a[4092:], "tail")
			e1 := encodeLogEntry(5, 0, mustGUID("11111111-2222-4333-8444-555555555555"), fsize, fsize,
				[]testDesc{{off: blockOff(0) + 8192, data: a}})
			want := bytes.Clone(ref)
			copy(want[8192:], a)

			// Entry 2: allocate block 7 at the end of the file, write its
			// first sector, and zero 8 KiB of block 3.
			newOff := (fsize + mib - 1) / mib * mib
			bat := make([]byte, logSector)
			rf, _ := os.Open(p)
			rf.ReadAt(bat, img.batReg.off)
			rf.Close()
			binary.LittleEndian.PutUint64(bat[8*(7+7/img.cr):], uint64(newOff/mib)<<batOffsetShift|stateFullPresent)
			bdata := bytes.Repeat([]byte{0xb2}, logSector)
			e2 := encodeLogEntry(6, 0, mustGUID("11111111-2222-4333-8444-555555555555"), newOff+bs, newOff+bs, []testDesc{
				{off: img.batReg.off, data: bat},
				{off: newOff, data: bdata},
				{off: blockOff(3) + 4096, zeroLen: 8192},
			})
			if tc.torn {
				e2[200]++
			} else {
				clear(want[7<<20 : 8<<20]) // block 7 now points at the new space
				copy(want[7<<20:], bdata)
				clear(want[3<<20+4096 : 3<<20+4096+8192])
			}
			wf, _ := os.OpenFile(p, os.O_RDWR, 0)
			wf.Truncate(newOff + bs) // the writer grew the file before logging
			h := img.hdrs[img.cur]
			wf.WriteAt(append(e1, e2...), h.logOff)
			wf.Close()
			setLogGUID(t, p, mustGUID("11111111-2222-4333-8444-555555555555"))

			if _, err := openPath(p, image.OpenOptions{ReadOnly: true}); !errors.Is(err, ErrDirtyLog) {
				t.Fatalf("read-only open of a dirty image: %v", err)
			}
			if fa, err := infoPath(p); err != nil || !fa.Dirty {
				t.Fatalf("Info of a dirty image: %+v, %v", fa, err)
			}
			cp := filepath.Join(dir, "copy.vhdx")
			data, _ := os.ReadFile(p)
			os.WriteFile(cp, data, 0o644)
			imagetest.Run(t, "qemu-img", "check", "-r", "all", cp)
			qemu := imagetest.QemuRaw(t, cp, "vhdx")
			imagetest.MustEqual(t, "qemu's replay", qemu, want)

			d, err = openPath(p, image.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			imagetest.MustEqual(t, "vdisk's replay", imagetest.ReadAll(t, d), want)
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			if fa, err := infoPath(p); err != nil || fa.Dirty {
				t.Fatalf("Info after replay: %+v, %v", fa, err)
			}
			imagetest.Run(t, "qemu-img", "check", p)
			imagetest.MustEqual(t, "qemu after vdisk's replay", imagetest.QemuRaw(t, p, "vhdx"), want)
		})
	}
}
