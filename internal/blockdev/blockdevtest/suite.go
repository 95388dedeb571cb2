// Package blockdevtest tests blockdev.Device implementations: Run is the
// conformance suite every Device must pass, Faulty injects errors into a
// Device, and Crashable is a memory Device that forgets, on Crash, every
// write not covered by a Flush.
package blockdevtest

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"

	"vdisk/internal/blockdev"
)

// DefaultSize is the size of the devices Run opens: a multiple of 4096 that
// is not a multiple of 64 KiB, so that a device's last page or cluster is a
// partial one.
const DefaultSize = 1<<20 + 12<<10

// MinSize is the smallest size RunWith accepts: the suite's ranges reach
// 500 KiB into the device.
const MinSize = 512 << 10

// verifyChunk is how much the suite reads at once when it compares a
// device with its model.
const verifyChunk = 256 << 10

// Options tune RunWith.
type Options struct {
	// Size of the devices the suite opens; zero means DefaultSize. It must
	// be at least MinSize.
	Size int64
}

// Open returns a new Device of size bytes for one subtest. The suite closes
// it (a Close after the suite's own returns ErrClosed and is ignored). The
// device's initial contents may be anything: the suite reads them first.
type Open func(t *testing.T, size int64) blockdev.Device

// Run runs the conformance suite on devices from open, with DefaultSize.
func Run(t *testing.T, open Open) {
	t.Helper()
	RunWith(t, Options{}, open)
}

// RunWith runs the conformance suite. A device whose Info says ReadOnly gets
// the read-only checks (every write refused, nothing changed); any other
// device gets the read-write checks. Capability checks (Trim, WriteZeroes,
// Extents) run for the capabilities the device has; the helpers'
// fallbacks are checked for those it lacks.
func RunWith(t *testing.T, opt Options, open Open) {
	t.Helper()
	size := opt.Size
	if size == 0 {
		size = DefaultSize
	}
	if size < MinSize {
		t.Fatalf("blockdevtest: size %d is below MinSize %d", size, int64(MinSize))
	}
	probe := open(t, size)
	ro := blockdev.InfoOf(probe).ReadOnly
	if err := probe.Close(); err != nil {
		t.Fatalf("close probe device: %v", err)
	}
	run := func(name string, f func(t *testing.T, h *harness)) {
		t.Run(name, func(t *testing.T) { f(t, start(t, open, size)) })
	}
	run("Size", testSize)
	run("Info", testInfo)
	run("Boundaries", testBoundaries)
	run("ZeroLength", testZeroLength)
	run("Extents", testExtents)
	run("ParallelReads", testParallelReads)
	run("Closed", testClosed)
	if ro {
		run("ReadOnly", testReadOnly)
		return
	}
	run("ReadWrite", testReadWrite)
	run("WriteOutOfRange", testWriteOutOfRange)
	run("ParallelDisjointWrites", testParallelDisjointWrites)
	run("Flush", testFlush)
	run("Trim", testTrim)
	run("WriteZeroes", testWriteZeroes)
	run("ExtentsAfterWrites", testExtentsAfterWrites)
	run("ClosedAfterWrites", testClosedAfterWrites)
}

// harness holds a device under test and a model of what it must contain.
type harness struct {
	t     *testing.T
	d     blockdev.Device
	size  int64
	model []byte
	ro    bool
	rng   *rand.Rand
}

func start(t *testing.T, open Open, size int64) *harness {
	t.Helper()
	d := open(t, size)
	t.Cleanup(func() {
		if err := d.Close(); err != nil && !errors.Is(err, blockdev.ErrClosed) {
			t.Errorf("close: %v", err)
		}
	})
	h := &harness{t: t, d: d, size: size, ro: blockdev.InfoOf(d).ReadOnly,
		rng: rand.New(rand.NewPCG(uint64(size), 0x5eed))}
	if got := d.Size(); got != size {
		t.Fatalf("Size() = %d, want %d", got, size)
	}
	h.model = make([]byte, size)
	h.read(h.model, 0)
	return h
}

// sub returns h for the subtest t: failures are reported on t, and the
// device and model are shared.
func (h *harness) sub(t *testing.T) *harness {
	c := *h
	c.t = t
	return &c
}

// read reads p at off and fails the test unless it is a full read.
func (h *harness) read(p []byte, off int64) {
	h.t.Helper()
	n, err := h.d.ReadAt(p, off)
	if err != nil || n != len(p) {
		h.t.Fatalf("ReadAt(%d bytes, %d) = %d, %v", len(p), off, n, err)
	}
}

// write writes p at off, fails the test unless it is a full write, and
// updates the model.
func (h *harness) write(p []byte, off int64) {
	h.t.Helper()
	n, err := h.d.WriteAt(p, off)
	if err != nil || n != len(p) {
		h.t.Fatalf("WriteAt(%d bytes, %d) = %d, %v", len(p), off, n, err)
	}
	copy(h.model[off:], p)
}

// pattern returns n bytes of noise with no zero byte.
func (h *harness) pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(h.rng.UintN(255) + 1)
	}
	return b
}

// verify reads the whole device and compares it with the model.
func (h *harness) verify() {
	h.t.Helper()
	buf := make([]byte, verifyChunk)
	for off := int64(0); off < h.size; off += verifyChunk {
		p := buf[:min(verifyChunk, h.size-off)]
		h.read(p, off)
		if i := firstDiff(p, h.model[off:]); i >= 0 {
			h.t.Fatalf("byte at %d is %#x, want %#x", off+int64(i), p[i], h.model[off+int64(i)])
		}
	}
}

// firstDiff returns the first index where a and b[:len(a)] differ, or -1.
func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b[:len(a)]) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// wantErr fails the test unless err matches target.
func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Errorf("%s: error %v, want %v", what, err, target)
	}
}

func testSize(t *testing.T, h *harness) {
	if h.d.Size() != h.size {
		t.Errorf("Size() = %d, want %d", h.d.Size(), h.size)
	}
}

func testInfo(t *testing.T, h *harness) {
	in := blockdev.InfoOf(h.d)
	pow2 := func(v uint32) bool { return v&(v-1) == 0 }
	if in.LogicalBlockSize < 512 || !pow2(in.LogicalBlockSize) {
		t.Errorf("LogicalBlockSize %d is not a power of two ≥ 512", in.LogicalBlockSize)
	}
	if in.PhysicalBlockSize < in.LogicalBlockSize || !pow2(in.PhysicalBlockSize) {
		t.Errorf("PhysicalBlockSize %d is not a power of two ≥ the logical %d", in.PhysicalBlockSize, in.LogicalBlockSize)
	}
}
