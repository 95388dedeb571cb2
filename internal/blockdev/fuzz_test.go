package blockdev_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/blockdev/blockdevtest"
)

// fuzzSize is the size of the fuzzed devices: several 64 KiB Mem pages and
// a partial last one.
const fuzzSize = 5*64<<10 + 1234

// fuzzOpLen is the bytes one fuzzed operation takes: kind, offset (3
// bytes), length (2 bytes).
const fuzzOpLen = 6

// FuzzDeviceOps runs a sequence of operations decoded from the input on
// Mem, Section(Mem) and Crashable, and compares every read, every extent
// and the final (and, for Crashable, the durable) contents with a model.
func FuzzDeviceOps(f *testing.F) {
	f.Add([]byte{0, 0, 0, 10, 0, 100, 1, 0, 0, 20, 0, 50, 4, 0, 0, 0, 0, 0, 5, 0, 0, 0, 255, 255})
	f.Add([]byte{0, 0, 255, 0, 255, 255, 2, 1, 0, 0, 200, 0, 3, 0, 255, 255, 16, 0, 6, 0, 0, 0, 0, 0})
	f.Add(bytes.Repeat([]byte{0, 4, 250, 1, 17, 3}, 20))
	f.Fuzz(func(t *testing.T, ops []byte) {
		crash := blockdevtest.NewCrashable(fuzzSize)
		devs := map[string]blockdev.Device{
			"Mem":       blockdev.NewMem(fuzzSize),
			"Section":   blockdev.Section(blockdev.NewMem(fuzzSize+3333), 3333, fuzzSize),
			"Crashable": crash,
		}
		model := make([]byte, fuzzSize)
		durable := make([]byte, fuzzSize)
		for i := 0; i+fuzzOpLen <= len(ops); i += fuzzOpLen {
			op := ops[i : i+fuzzOpLen]
			// Offsets run a little past the end, to hit the boundaries.
			off := (int64(op[1])<<16 | int64(op[2])<<8 | int64(op[3])) % (fuzzSize + 1024)
			n := int64(binary.BigEndian.Uint16(op[4:]))
			inRange := blockdev.CheckRange(off, n, fuzzSize) == nil
			kind := op[0] % 6
			for name, d := range devs {
				var err error
				switch kind {
				case 0:
					_, err = d.WriteAt(bytes.Repeat([]byte{op[0] | 1}, int(n)), off)
				case 1:
					err = blockdev.Trim(d, off, n)
				case 2, 3:
					err = blockdev.WriteZeroes(d, off, n, kind == 3)
				case 4:
					err = d.Flush()
				case 5:
					err = checkFuzzRange(d, model, off, n)
				}
				if kind != 4 && !inRange {
					if err == nil {
						t.Fatalf("%s: op %d on [%d, +%d) outside the device succeeded", name, kind, off, n)
					}
					continue
				}
				if err != nil {
					t.Fatalf("%s: op %d on [%d, +%d): %v", name, kind, off, n, err)
				}
			}
			if !inRange && kind != 4 {
				continue
			}
			switch kind {
			case 0:
				copy(model[off:off+n], bytes.Repeat([]byte{op[0] | 1}, int(n)))
			case 1, 2, 3:
				clear(model[off : off+n])
			case 4:
				copy(durable, model)
			}
		}
		for name, d := range devs {
			if err := checkFuzzRange(d, model, 0, fuzzSize); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}
		got := make([]byte, fuzzSize)
		if _, err := crash.Crash().ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, durable) {
			t.Fatal("Crashable: durable image differs from the contents at the last flush")
		}
	})
}

// checkFuzzRange reads [off, off+n) of d and checks it and its extents
// against the model. Out-of-range reads return the device's error.
func checkFuzzRange(d blockdev.Device, model []byte, off, n int64) error {
	buf := make([]byte, n)
	if _, err := d.ReadAt(buf, off); err != nil {
		return err
	}
	if !bytes.Equal(buf, model[off:off+n]) {
		return fmt.Errorf("read [%d, +%d) differs from the model", off, n)
	}
	for pos := off; pos < off+n; {
		ext, err := blockdev.Extents(d, pos, off+n-pos)
		if err != nil {
			return err
		}
		for _, e := range ext {
			if e.Off != pos || e.Len <= 0 || e.Off+e.Len > off+n {
				return fmt.Errorf("extent %+v outside [%d, %d) or not contiguous", e, pos, off+n)
			}
			if e.Flags&blockdev.ExtentZero != 0 && !blockdev.IsZero(model[e.Off:e.Off+e.Len]) {
				return fmt.Errorf("extent %+v claims zeroes over data", e)
			}
			pos += e.Len
		}
	}
	return nil
}
