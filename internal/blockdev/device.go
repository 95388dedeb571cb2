// Package blockdev defines the Device, the one interface every layer of a
// vdisk stack speaks (exports above, overlays and crypt in the middle,
// formats and backends below), its optional capabilities, the errors every
// layer shares, and the simple devices: Mem (memory) and File (a raw file).
//
// A Device is a fixed-size array of bytes. Optional capabilities (Trimmer,
// ZeroWriter, Extenter) are separate one-method interfaces found by type
// assertion, never stubs that pretend: an export asks, and tells its client
// the truth. The helpers Trim, WriteZeroes and Extents fall back honestly
// when a device lacks the capability.
//
// Decorators wrap a Device and keep the interface: ReadOnly refuses
// writes, Section is a window of a larger device. WithCaps lets a decorator
// expose a capability only when the device it wraps has it. Errno maps any
// error to the errno an export sends. Package blockdevtest holds the
// conformance suite every Device passes, and the Faulty and Crashable
// devices for fault and power-failure tests.
//
// blockdev imports only the standard library and golang.org/x/sys.
package blockdev

import "io"

// Device is a fixed-size virtual disk.
//
// ReadAt and WriteAt follow io.ReaderAt and io.WriterAt exactly, with one
// tightening: a range that does not lie wholly inside [0, Size()) is refused
// with ErrOutOfRange and nothing is transferred (a short transfer only ever
// comes with an I/O error). Both may be called from many goroutines at once;
// concurrent writes to overlapping ranges leave either one's bytes.
//
// Flush makes every WriteAt (and Trim, WriteZeroes) that completed before the
// call durable when it returns. Close flushes, then releases; every method
// called after Close returns ErrClosed.
type Device interface {
	io.ReaderAt
	io.WriterAt
	// Size is the device's length in bytes. It does not change while the
	// device is open.
	Size() int64
	// Flush makes all completed writes durable.
	Flush() error
	// Close flushes, then releases the device.
	io.Closer
}

// Trimmer is a Device that can discard a range: afterwards the range reads
// as zeroes, and its storage may be released.
type Trimmer interface {
	Trim(off, n int64) error
}

// ZeroWriter is a Device that can make a range read as zeroes more cheaply
// than writing zero bytes. With mayTrim the device may release the storage
// (punch a hole); without it the storage stays allocated.
type ZeroWriter interface {
	WriteZeroes(off, n int64, mayTrim bool) error
}

// ExtentFlags describe a range of a device.
type ExtentFlags uint32

const (
	// ExtentHole means the range is not allocated in the device's storage.
	ExtentHole ExtentFlags = 1 << 0
	// ExtentZero means the range reads as zeroes.
	ExtentZero ExtentFlags = 1 << 1
)

// Extent is a run of bytes that share the same flags. Data that is allocated
// and may be non-zero has Flags == 0.
type Extent struct {
	Off, Len int64
	Flags    ExtentFlags
}

// Extenter is a Device that knows which of its ranges are holes or zeroes.
//
// Extents describes [off, off+n): the extents returned are contiguous, start
// at off, and cover at least one byte; they may end before off+n (the caller
// asks again from where they stopped) but never after it. A device may report
// a range as data (Flags 0) when it does not know better; it must never
// report as zero a range that may hold non-zero bytes.
type Extenter interface {
	Extents(off, n int64) ([]Extent, error)
}

// Depther is a Device built in layers (an image over its backing chain):
// for each range it tells which layer holds it, 1 for the top one, 2 for
// its backing file and so on, 0 where no layer does (the range reads as
// zeroes). It is what NBD's qemu:allocation-depth context reports. A
// Device that is not a Depther is one layer: depth 1 everywhere.
type Depther interface {
	// Depth reports depths from off on, as contiguous extents starting
	// at off, covering at most n bytes (callers ask again for the rest).
	Depth(off, n int64) ([]DepthExtent, error)
}

// DepthExtent is a range and the layer that holds it.
type DepthExtent struct {
	Off, Len int64
	Depth    uint32
}

// Depths returns d's depth extents over [off, off+n): d's own when it is
// a Depther, else one extent of depth 1.
func Depths(d Device, off, n int64) ([]DepthExtent, error) {
	if err := CheckRange(off, n, d.Size()); err != nil {
		return nil, err
	}
	if dd, ok := d.(Depther); ok {
		return dd.Depth(off, n)
	}
	return []DepthExtent{{Off: off, Len: n, Depth: 1}}, nil
}

// Resizer is a Device whose size can change (vdisk resize). Growing may
// run while I/O is in flight (an open disk grows); shrinking is for a
// device nobody uses. A grown range reads as zeroes.
type Resizer interface {
	Resize(size int64) error
}

// Info describes static facts a Device may offer about itself. An export
// passes them on to its client (NBD block sizes, loop block size).
type Info struct {
	// LogicalBlockSize is the smallest unit of I/O the device can do
	// without read-modify-write (512 or 4096). Zero means 512.
	LogicalBlockSize uint32
	// PhysicalBlockSize is the preferred I/O size. Zero means 4096.
	PhysicalBlockSize uint32
	// ReadOnly means WriteAt, Trim and WriteZeroes always fail with
	// ErrReadOnly.
	ReadOnly bool
	// Rotational hints that seeks are expensive.
	Rotational bool
}

// Describer is a Device that reports its Info. A Device that does not
// implement it gets the zero Info (512/4096, writable, not rotational).
type Describer interface {
	Info() Info
}

// InfoOf returns d's Info with zero block sizes replaced by their defaults.
func InfoOf(d Device) Info {
	var in Info
	if ds, ok := d.(Describer); ok {
		in = ds.Info()
	}
	if in.LogicalBlockSize == 0 {
		in.LogicalBlockSize = 512
	}
	if in.PhysicalBlockSize == 0 {
		in.PhysicalBlockSize = 4096
	}
	return in
}

// CheckRange returns ErrOutOfRange (wrapped with the offending range) unless
// [off, off+n) lies inside [0, size). A zero-length range is valid at any
// offset in [0, size].
func CheckRange(off, n, size int64) error {
	if off < 0 || n < 0 || off > size || n > size-off {
		return &RangeError{Off: off, Len: n, Size: size}
	}
	return nil
}
