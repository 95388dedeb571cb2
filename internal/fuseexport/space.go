package fuseexport

import (
	"context"
	"math"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"

	"vdisk/internal/blockdev"
)

// maxExtentCalls bounds the Extents calls one Getattr or Lseek makes; past
// it the rest of the device is taken to be data (the answer that is never
// wrong).
const maxExtentCalls = 4096

// isHole reports whether an extent reads as zeroes (a hole for lseek).
func isHole(e blockdev.Extent) bool {
	return e.Flags&(blockdev.ExtentHole|blockdev.ExtentZero) != 0
}

// walkExtents calls fn for each extent of [off, size) in order until fn
// returns false, at most maxExtentCalls calls to Extents. It returns the
// offset where it stopped (size when it reached the end) and the first
// error.
func (f *diskFile) walkExtents(off int64, fn func(blockdev.Extent) bool) (int64, error) {
	for range maxExtentCalls {
		size := f.size.Load()
		if off >= size {
			return size, nil
		}
		es, err := blockdev.Extents(f.dev, off, size-off)
		if err != nil {
			return off, err
		}
		if len(es) == 0 {
			return off, nil // a broken Extenter: stop, assume data
		}
		for _, e := range es {
			if e.Off != off || e.Len <= 0 {
				return off, nil // not contiguous: stop, assume data
			}
			if !fn(e) {
				return off, nil
			}
			off += e.Len
		}
	}
	return off, nil
}

// allocated returns how many bytes of the device hold storage (not holes),
// for the file's block count.
func (f *diskFile) allocated() int64 {
	size := f.size.Load()
	if _, ok := f.dev.(blockdev.Extenter); !ok {
		return size
	}
	var n int64
	end, err := f.walkExtents(0, func(e blockdev.Extent) bool {
		if e.Flags&blockdev.ExtentHole == 0 {
			n += e.Len
		}
		return true
	})
	if err != nil {
		f.log.Debug("fuse getattr: extents", "err", err)
	}
	return n + max(0, size-end)
}

// Lseek answers SEEK_DATA and SEEK_HOLE from the device's extents. Ranges
// that read as zeroes count as holes; the end of the file is a hole.
func (f *diskFile) Lseek(ctx context.Context, _ fs.FileHandle, off uint64, whence uint32) (uint64, syscall.Errno) {
	if whence != unix.SEEK_DATA && whence != unix.SEEK_HOLE {
		return 0, syscall.EINVAL
	}
	size := f.size.Load()
	if off >= uint64(size) {
		return 0, syscall.ENXIO
	}
	start := int64(off)
	found := int64(-1)
	stop, err := f.walkExtents(start, func(e blockdev.Extent) bool {
		if isHole(e) == (whence == unix.SEEK_HOLE) {
			found = max(e.Off, start)
			return false
		}
		return true
	})
	if err != nil {
		return 0, f.errno("lseek", start, 0, err)
	}
	switch {
	case found >= 0:
		return uint64(found), 0
	case whence == unix.SEEK_HOLE:
		return uint64(size), 0 // the implicit hole at the end
	case stop < size:
		return uint64(stop), 0 // gave up looking: call it data
	default:
		return 0, syscall.ENXIO // no data after off
	}
}

// Allocate maps fallocate(2): PUNCH_HOLE to Trim, ZERO_RANGE to
// WriteZeroes keeping the storage, plain allocation inside the file to
// nothing (the device decides where its storage comes from). Ranges past
// the end are cut off when KEEP_SIZE is given and refused with ENOSPC when
// the file would have to grow. Other modes get EOPNOTSUPP.
func (f *diskFile) Allocate(ctx context.Context, _ fs.FileHandle, off, size uint64, mode uint32) syscall.Errno {
	if f.readOnly {
		return syscall.EROFS
	}
	if off > math.MaxInt64 || size > math.MaxInt64-off {
		return syscall.EFBIG
	}
	start, end := int64(off), int64(off+size)
	keep := mode&unix.FALLOC_FL_KEEP_SIZE != 0
	op := mode &^ unix.FALLOC_FL_KEEP_SIZE
	if op != 0 && op != unix.FALLOC_FL_PUNCH_HOLE && op != unix.FALLOC_FL_ZERO_RANGE {
		return syscall.EOPNOTSUPP
	}
	if op == unix.FALLOC_FL_PUNCH_HOLE && !keep {
		return syscall.EOPNOTSUPP // punching must keep the size
	}
	fsize := f.size.Load()
	if end > fsize && !keep {
		return syscall.ENOSPC
	}
	end = min(end, fsize)
	if start >= end {
		return 0
	}
	var err error
	switch op {
	case unix.FALLOC_FL_PUNCH_HOLE:
		err = blockdev.Trim(f.dev, start, end-start)
	case unix.FALLOC_FL_ZERO_RANGE:
		err = blockdev.WriteZeroes(f.dev, start, end-start, false)
	}
	if err != nil {
		return f.errno("fallocate", start, end-start, err)
	}
	return 0
}
