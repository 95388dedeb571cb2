package blockdevtest

import (
	"fmt"
	"testing"

	"vdisk/internal/blockdev"
)

// zeroRanges are ranges the Trim and WriteZeroes tests clear, inside the
// first 320 KiB of the device, and one at its end.
func zeroRanges(size int64) []struct {
	name   string
	off, n int64
} {
	return []struct {
		name   string
		off, n int64
	}{
		{"one byte", 5, 1},
		{"unaligned", 1000, 70000},
		{"aligned 4 KiB", 8192, 4096},
		{"aligned 64 KiB page", 128 << 10, 64 << 10},
		{"several pages, ragged", 64<<10 + 512, 200 << 10},
		{"zero length", 300 << 10, 0},
		{"last byte", size - 1, 1},
		{"tail", size - 20000, 20000},
	}
}

// fill writes noise over the first 320 KiB and the last 64 KiB.
func (h *harness) fill() {
	h.write(h.pattern(320<<10), 0)
	h.write(h.pattern(64<<10), h.size-64<<10)
}

// zeroModel clears [off, off+n) of the model.
func (h *harness) zeroModel(off, n int64) { clear(h.model[off : off+n]) }

func testTrim(t *testing.T, h *harness) {
	tr, ok := h.d.(blockdev.Trimmer)
	if !ok {
		wantErr(t, "blockdev.Trim without Trimmer", blockdev.Trim(h.d, 0, 4096), blockdev.ErrNotSupported)
		h.verify()
		return
	}
	h.fill()
	for _, r := range zeroRanges(h.size) {
		t.Run(r.name, func(t *testing.T) {
			h := h.sub(t)
			if err := tr.Trim(r.off, r.n); err != nil {
				t.Fatalf("Trim(%d, %d): %v", r.off, r.n, err)
			}
			h.zeroModel(r.off, r.n)
			h.verify()
		})
	}
	for _, r := range badRanges(h.size) {
		t.Run(r.name, func(t *testing.T) {
			h := h.sub(t)
			wantErr(t, fmt.Sprintf("Trim(%d, %d)", r.off, r.n), tr.Trim(r.off, r.n), blockdev.ErrOutOfRange)
			wantErr(t, fmt.Sprintf("blockdev.Trim(%d, %d)", r.off, r.n), blockdev.Trim(h.d, r.off, r.n), blockdev.ErrOutOfRange)
		})
	}
	h.verify()
	// A trimmed range can be written again.
	h.write(h.pattern(4096), 128<<10)
	h.verify()
}

func testWriteZeroes(t *testing.T, h *harness) {
	z, hasZ := h.d.(blockdev.ZeroWriter)
	for _, mayTrim := range []bool{false, true} {
		t.Run(fmt.Sprint("mayTrim=", mayTrim), func(t *testing.T) {
			h := h.sub(t)
			h.fill()
			for _, r := range zeroRanges(h.size) {
				t.Run(r.name, func(t *testing.T) {
					h := h.sub(t)
					if err := blockdev.WriteZeroes(h.d, r.off, r.n, mayTrim); err != nil {
						t.Fatalf("blockdev.WriteZeroes(%d, %d, %v): %v", r.off, r.n, mayTrim, err)
					}
					h.zeroModel(r.off, r.n)
					h.verify()
				})
			}
			if hasZ {
				// Straight through the capability too, over fresh data.
				h.write(h.pattern(100<<10), 0)
				if err := z.WriteZeroes(3, 100<<10-6, mayTrim); err != nil {
					t.Fatalf("WriteZeroes: %v", err)
				}
				h.zeroModel(3, 100<<10-6)
				h.verify()
			}
			for _, r := range badRanges(h.size) {
				t.Run(r.name, func(t *testing.T) {
					h := h.sub(t)
					what := fmt.Sprintf("WriteZeroes(%d, %d, %v)", r.off, r.n, mayTrim)
					wantErr(t, "blockdev."+what, blockdev.WriteZeroes(h.d, r.off, r.n, mayTrim), blockdev.ErrOutOfRange)
					if hasZ {
						wantErr(t, what, z.WriteZeroes(r.off, r.n, mayTrim), blockdev.ErrOutOfRange)
					}
				})
			}
			h.verify()
		})
	}
}

// maxExtentCalls bounds the Extents calls checkExtents makes for one range.
const maxExtentCalls = 1 << 16

// checkExtents walks [off, off+n) with Extents, asking again from where each
// answer stops, and checks the contract: each answer starts where asked,
// is contiguous, covers at least one byte and stays inside the range, and
// no extent flagged zero holds a non-zero byte of the model.
func (h *harness) checkExtents(t *testing.T, off, n int64) {
	t.Helper()
	pos, end := off, off+n
	for calls := 0; pos < end; calls++ {
		if calls == maxExtentCalls {
			t.Fatalf("Extents(%d, %d): no end after %d calls", off, n, calls)
		}
		ext, err := blockdev.Extents(h.d, pos, end-pos)
		if err != nil {
			t.Fatalf("Extents(%d, %d): %v", pos, end-pos, err)
		}
		if len(ext) == 0 {
			t.Fatalf("Extents(%d, %d) returned no extent", pos, end-pos)
		}
		for _, e := range ext {
			if e.Off != pos {
				t.Fatalf("Extents(%d, %d): extent %+v starts at %d, want %d (not contiguous)", off, n, e, e.Off, pos)
			}
			if e.Len <= 0 || e.Len > end-pos {
				t.Fatalf("Extents(%d, %d): extent %+v has a bad length (range ends at %d)", off, n, e, end)
			}
			if e.Flags&blockdev.ExtentZero != 0 {
				if i := firstNonZero(h.model[e.Off : e.Off+e.Len]); i >= 0 {
					t.Fatalf("Extents(%d, %d): extent %+v claims zeroes, but byte %d is %#x", off, n, e, e.Off+int64(i), h.model[e.Off+int64(i)])
				}
			}
			pos += e.Len
		}
	}
}

func firstNonZero(b []byte) int {
	if blockdev.IsZero(b) {
		return -1
	}
	for i, c := range b {
		if c != 0 {
			return i
		}
	}
	return -1
}

// extentRanges are the ranges the Extents tests describe.
func extentRanges(size int64) []struct {
	name   string
	off, n int64
} {
	return []struct {
		name   string
		off, n int64
	}{
		{"whole device", 0, size},
		{"first byte", 0, 1},
		{"last byte", size - 1, 1},
		{"unaligned middle", 4097, 300000},
		{"inner", 1, size - 2},
	}
}

func testExtents(t *testing.T, h *harness) {
	for _, r := range extentRanges(h.size) {
		t.Run(r.name, func(t *testing.T) { h.checkExtents(t, r.off, r.n) })
	}
	e, ok := h.d.(blockdev.Extenter)
	for _, r := range badRanges(h.size) {
		t.Run(r.name, func(t *testing.T) {
			h := h.sub(t)
			what := fmt.Sprintf("Extents(%d, %d)", r.off, r.n)
			_, err := blockdev.Extents(h.d, r.off, r.n)
			wantErr(t, "blockdev."+what, err, blockdev.ErrOutOfRange)
			if ok {
				_, err := e.Extents(r.off, r.n)
				wantErr(t, what, err, blockdev.ErrOutOfRange)
			}
		})
	}
	if !ok {
		// The helper's honest answer for a device that knows nothing.
		ext, err := blockdev.Extents(h.d, 10, 1000)
		if err != nil || len(ext) != 1 || ext[0] != (blockdev.Extent{Off: 10, Len: 1000}) {
			t.Errorf("blockdev.Extents without Extenter = %+v, %v; want one data extent", ext, err)
		}
	}
}

func testExtentsAfterWrites(t *testing.T, h *harness) {
	// Data in scattered places, some of it single bytes, some trimmed or
	// zeroed again, then the contract over many ranges.
	for _, off := range []int64{0, 4095, 64 << 10, 200<<10 + 3, h.size - 1} {
		h.write(h.pattern(1), off)
	}
	h.write(h.pattern(100<<10), 300<<10)
	h.write(h.pattern(7000), h.size-9000)
	if err := blockdev.WriteZeroes(h.d, 320<<10, 16<<10, true); err != nil {
		t.Fatalf("WriteZeroes: %v", err)
	}
	h.zeroModel(320<<10, 16<<10)
	if tr, ok := h.d.(blockdev.Trimmer); ok {
		if err := tr.Trim(350<<10, 8<<10); err != nil {
			t.Fatalf("Trim: %v", err)
		}
		h.zeroModel(350<<10, 8<<10)
	}
	h.verify()
	for _, r := range extentRanges(h.size) {
		t.Run(r.name, func(t *testing.T) { h.checkExtents(t, r.off, r.n) })
	}
	for off := int64(0); off < h.size; off += 61 << 10 {
		h.checkExtents(t, off, min(h.size-off, 5000))
	}
}
