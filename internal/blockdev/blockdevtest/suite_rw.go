package blockdevtest

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"testing"

	"vdisk/internal/blockdev"
)

// parallelism is how many goroutines the parallel tests run at once.
const parallelism = 8

// badRanges are ranges outside a device of size bytes.
func badRanges(size int64) []struct {
	name   string
	off, n int64
} {
	return []struct {
		name   string
		off, n int64
	}{
		{"negative offset", -1, 1},
		{"negative offset, zero length", -1, 0},
		{"at the end", size, 1},
		{"straddling the end by one", size - 1, 2},
		{"straddling the end by a page", size - 4096, 8192},
		{"past the end, zero length", size + 1, 0},
		{"offset near MaxInt64", math.MaxInt64 - 1, 2},
	}
}

func testBoundaries(t *testing.T, h *harness) {
	for _, r := range badRanges(h.size) {
		t.Run(r.name, func(t *testing.T) {
			h := h.sub(t)
			p := make([]byte, r.n)
			n, err := h.d.ReadAt(p, r.off)
			wantErr(t, fmt.Sprintf("ReadAt(%d bytes, %d)", r.n, r.off), err, blockdev.ErrOutOfRange)
			if n != 0 {
				t.Errorf("ReadAt out of range transferred %d bytes", n)
			}
		})
	}
	// The first and last byte can be read on their own.
	b := make([]byte, 1)
	h.read(b, 0)
	h.read(b, h.size-1)
	if b[0] != h.model[h.size-1] {
		t.Errorf("last byte %#x, want %#x", b[0], h.model[h.size-1])
	}
}

func testZeroLength(t *testing.T, h *harness) {
	for _, off := range []int64{0, 1, h.size / 2, h.size} {
		if n, err := h.d.ReadAt(nil, off); n != 0 || err != nil {
			t.Errorf("ReadAt(0 bytes, %d) = %d, %v; want 0, nil", off, n, err)
		}
		n, err := h.d.WriteAt([]byte{}, off)
		if n != 0 || (err != nil && !(h.ro && errors.Is(err, blockdev.ErrReadOnly))) {
			t.Errorf("WriteAt(0 bytes, %d) = %d, %v; want 0, nil", off, n, err)
		}
		if _, err := blockdev.Extents(h.d, off, 0); err != nil {
			t.Errorf("Extents(%d, 0): %v", off, err)
		}
	}
	h.verify()
}

func testReadWrite(t *testing.T, h *harness) {
	tests := []struct {
		name   string
		off, n int64
	}{
		{"first byte", 0, 1},
		{"last byte", h.size - 1, 1},
		{"first sector", 0, 512},
		{"last sector", h.size - 512, 512},
		{"unaligned small", 1001, 77},
		{"straddling 4 KiB", 4096 - 100, 200},
		{"straddling 64 KiB", 64<<10 - 3000, 6000},
		{"large unaligned", 200<<10 + 7, 300<<10 + 13},
		{"tail to the last byte", h.size - 70000, 70000},
		{"whole device", 0, h.size},
		{"overwrite inside", 100 << 10, 4096},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := h.sub(t)
			p := h.pattern(int(tc.n))
			h.write(p, tc.off)
			got := make([]byte, tc.n)
			h.read(got, tc.off)
			if i := firstDiff(got, p); i >= 0 {
				t.Fatalf("read back: byte at %d is %#x, want %#x", tc.off+int64(i), got[i], p[i])
			}
		})
	}
	h.verify()
}

func testWriteOutOfRange(t *testing.T, h *harness) {
	// Put data near the end so that a partial straddling write would show.
	h.write(h.pattern(8192), h.size-8192)
	for _, r := range badRanges(h.size) {
		t.Run(r.name, func(t *testing.T) {
			h := h.sub(t)
			n, err := h.d.WriteAt(h.pattern(int(r.n)), r.off)
			wantErr(t, fmt.Sprintf("WriteAt(%d bytes, %d)", r.n, r.off), err, blockdev.ErrOutOfRange)
			if n != 0 {
				t.Errorf("WriteAt out of range wrote %d bytes", n)
			}
		})
	}
	h.verify()
}

// runParallel runs f(g) for g in [0, parallelism) on their own goroutines
// and waits for them.
func runParallel(f func(g int)) {
	var wg sync.WaitGroup
	for g := range parallelism {
		wg.Go(func() { f(g) })
	}
	wg.Wait()
}

func testParallelDisjointWrites(t *testing.T, h *harness) {
	// Aligned chunks, then unaligned ones whose neighbours share sectors
	// and pages: a device that read-modify-writes must still keep both.
	for _, chunk := range []int64{4096, 1000, 100} {
		t.Run(fmt.Sprint("chunk ", chunk), func(t *testing.T) {
			h := h.sub(t)
			span := min(h.size-64<<10, 256*chunk)
			// The stable region after span is read while the writes run.
			stable := h.model[span : span+64<<10]
			data := h.pattern(int(span))
			runParallel(func(g int) {
				buf := make([]byte, len(stable))
				for i := int64(g); i*chunk < span; i += parallelism {
					off := i * chunk
					p := data[off:min(off+chunk, span)]
					if n, err := h.d.WriteAt(p, off); err != nil || n != len(p) {
						t.Errorf("WriteAt(%d bytes, %d) = %d, %v", len(p), off, n, err)
						return
					}
					if i%(4*parallelism) == int64(g) {
						if n, err := h.d.ReadAt(buf, span); err != nil || n != len(buf) {
							t.Errorf("ReadAt(%d, %d) = %d, %v", len(buf), span, n, err)
							return
						}
						if j := firstDiff(buf, stable); j >= 0 {
							t.Errorf("untouched byte at %d changed during parallel writes", span+int64(j))
							return
						}
					}
				}
			})
			copy(h.model, data)
			h.verify()
		})
	}
}

func testParallelReads(t *testing.T, h *harness) {
	runParallel(func(g int) {
		buf := make([]byte, 4096+g)
		for off := int64(g) * 999; off+int64(len(buf)) <= h.size; off += 37 << 10 {
			if n, err := h.d.ReadAt(buf, off); err != nil || n != len(buf) {
				t.Errorf("ReadAt(%d, %d) = %d, %v", len(buf), off, n, err)
				return
			}
			if j := firstDiff(buf, h.model[off:]); j >= 0 {
				t.Errorf("parallel read: byte at %d is %#x, want %#x", off+int64(j), buf[j], h.model[off+int64(j)])
				return
			}
		}
	})
}

func testFlush(t *testing.T, h *harness) {
	if err := h.d.Flush(); err != nil {
		t.Fatalf("Flush with nothing written: %v", err)
	}
	h.write(h.pattern(12345), 3000)
	if err := h.d.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	h.verify()
	// Flushes in parallel with writes.
	data := h.pattern(256 << 10)
	runParallel(func(g int) {
		for off := int64(g) * 4096; off < int64(len(data)); off += parallelism * 4096 {
			if _, err := h.d.WriteAt(data[off:off+4096], off); err != nil {
				t.Errorf("WriteAt: %v", err)
				return
			}
			if err := h.d.Flush(); err != nil {
				t.Errorf("Flush: %v", err)
				return
			}
		}
	})
	copy(h.model, data)
	h.verify()
}

// closedCalls are every call a device refuses after Close.
func closedCalls(d blockdev.Device) map[string]func() error {
	calls := map[string]func() error{
		"ReadAt":  func() error { _, err := d.ReadAt(make([]byte, 512), 0); return err },
		"WriteAt": func() error { _, err := d.WriteAt(make([]byte, 512), 0); return err },
		"Flush":   d.Flush,
		"Close":   d.Close,
	}
	if tr, ok := d.(blockdev.Trimmer); ok {
		calls["Trim"] = func() error { return tr.Trim(0, 512) }
	}
	if z, ok := d.(blockdev.ZeroWriter); ok {
		calls["WriteZeroes"] = func() error { return z.WriteZeroes(0, 512, false) }
		calls["WriteZeroes mayTrim"] = func() error { return z.WriteZeroes(0, 512, true) }
	}
	if e, ok := d.(blockdev.Extenter); ok {
		calls["Extents"] = func() error { _, err := e.Extents(0, 512); return err }
	}
	return calls
}

func testClosed(t *testing.T, h *harness) {
	if err := h.d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for name, call := range closedCalls(h.d) {
		wantErr(t, name+" after Close", call(), blockdev.ErrClosed)
	}
	if h.d.Size() != h.size {
		t.Errorf("Size() after Close = %d, want %d", h.d.Size(), h.size)
	}
}

func testClosedAfterWrites(t *testing.T, h *harness) {
	h.write(h.pattern(5000), 777)
	testClosed(t, h)
}

func testReadOnly(t *testing.T, h *harness) {
	if n, err := h.d.WriteAt([]byte{1, 2, 3}, 0); n != 0 || !errors.Is(err, blockdev.ErrReadOnly) {
		t.Errorf("WriteAt = %d, %v; want 0, ErrReadOnly", n, err)
	}
	if tr, ok := h.d.(blockdev.Trimmer); ok {
		wantErr(t, "Trim", tr.Trim(0, 4096), blockdev.ErrReadOnly)
	}
	if z, ok := h.d.(blockdev.ZeroWriter); ok {
		wantErr(t, "WriteZeroes", z.WriteZeroes(0, 4096, false), blockdev.ErrReadOnly)
		wantErr(t, "WriteZeroes mayTrim", z.WriteZeroes(0, 4096, true), blockdev.ErrReadOnly)
	}
	wantErr(t, "blockdev.WriteZeroes", blockdev.WriteZeroes(h.d, 0, 4096, true), blockdev.ErrReadOnly)
	if err := blockdev.Trim(h.d, 0, 4096); !errors.Is(err, blockdev.ErrReadOnly) && !errors.Is(err, blockdev.ErrNotSupported) {
		t.Errorf("blockdev.Trim: %v, want ErrReadOnly or ErrNotSupported", err)
	}
	if err := h.d.Flush(); err != nil {
		t.Errorf("Flush: %v", err)
	}
	h.verify()
}
