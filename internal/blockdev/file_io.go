//go:build linux

package blockdev

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// fallocate(2) modes (linux/falloc.h).
const (
	fallocKeepSize  = 0x01 // FALLOC_FL_KEEP_SIZE
	fallocPunchHole = 0x02 // FALLOC_FL_PUNCH_HOLE
	fallocZeroRange = 0x10 // FALLOC_FL_ZERO_RANGE
)

// lseek(2) whences for sparse files.
const (
	seekData = 3 // SEEK_DATA
	seekHole = 4 // SEEK_HOLE
)

// maxFileExtents bounds how many extents one Extents call returns; a caller
// asks again from where the answer stopped.
const maxFileExtents = 1024

// ioErr turns an error from the os.File into the package's vocabulary.
func (f *File) ioErr(op string, off, n int64, err error) error {
	switch {
	case errors.Is(err, os.ErrClosed):
		return ErrClosed
	case errors.Is(err, io.EOF):
		// The size is fixed at open; a short file means someone truncated it.
		return fmt.Errorf("%s %s at %d+%d: image shorter than its size %d: %w", op, f.path, off, n, f.Size(), io.ErrUnexpectedEOF)
	}
	return fmt.Errorf("%s %s at %d+%d: %w", op, f.path, off, n, mapNoSpace(err))
}

// check refuses calls on a closed File and ranges outside it.
func (f *File) check(off, n int64, write bool) error {
	if f.closed.Load() {
		return ErrClosed
	}
	if err := CheckRange(off, n, f.Size()); err != nil {
		return err
	}
	if write && f.ro {
		return ErrReadOnly
	}
	return nil
}

// ReadAt reads len(p) bytes at off with pread (under direct I/O through a
// bounce buffer when p or off is not aligned).
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	if err := f.check(off, int64(len(p)), false); err != nil {
		return 0, err
	}
	n, err := f.readAt(p, off)
	if err != nil {
		return n, f.ioErr("read", off, int64(len(p)), err)
	}
	return n, nil
}

// WriteAt writes p at off with pwrite (under direct I/O, an unaligned write
// reads, modifies and writes back its edge blocks).
func (f *File) WriteAt(p []byte, off int64) (int, error) {
	if err := f.check(off, int64(len(p)), true); err != nil {
		return 0, err
	}
	n, err := f.writeAt(p, off)
	if err != nil {
		return n, f.ioErr("write", off, int64(len(p)), err)
	}
	return n, nil
}

// Flush calls fdatasync; under CacheUnsafe it does nothing.
func (f *File) Flush() error {
	if f.closed.Load() {
		return ErrClosed
	}
	if f.cache == CacheUnsafe {
		return nil
	}
	return f.datasync()
}

func (f *File) datasync() error {
	var err error
	if f.ring != nil {
		err = f.ring.datasync()
	} else {
		err = f.control(func(fd int) error { return syscall.Fdatasync(fd) })
	}
	if err != nil {
		return f.ioErr("flush", 0, f.Size(), err)
	}
	return nil
}

// control runs fn with the descriptor, which stays open while fn runs.
func (f *File) control(fn func(fd int) error) error {
	rc, err := f.f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// Close flushes, then closes the file and so releases its lock. A second
// Close returns ErrClosed.
func (f *File) Close() error {
	if !f.closed.CompareAndSwap(false, true) {
		return ErrClosed
	}
	var ferr error
	if !f.ro {
		ferr = f.datasync()
	}
	if f.ring != nil {
		f.ring.close()
	}
	if err := f.f.Close(); err != nil && ferr == nil {
		ferr = fmt.Errorf("close %s: %w", f.path, err)
	}
	return ferr
}

// Trim punches a hole over [off, off+n): the range reads as zeroes and its
// blocks are released. Where the filesystem cannot punch holes, zero bytes
// are written instead.
func (f *File) Trim(off, n int64) error {
	return f.WriteZeroes(off, n, true)
}

// WriteZeroes makes [off, off+n) read as zeroes: with mayTrim by punching a
// hole, otherwise with FALLOC_FL_ZERO_RANGE, which keeps the blocks
// allocated. Where the filesystem (or device, for an unaligned range)
// refuses the fallocate mode, zero bytes are written instead.
func (f *File) WriteZeroes(off, n int64, mayTrim bool) error {
	if err := f.check(off, n, true); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	mode := uint32(fallocZeroRange | fallocKeepSize)
	if mayTrim {
		mode = fallocPunchHole | fallocKeepSize
	}
	err := f.control(func(fd int) error {
		for {
			err := syscall.Fallocate(fd, mode, off, n)
			if !errors.Is(err, syscall.EINTR) {
				return err
			}
		}
	})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, syscall.EOPNOTSUPP), errors.Is(err, syscall.ENOSYS),
		errors.Is(err, syscall.EINVAL), errors.Is(err, syscall.ENODEV):
		return WriteZeroesByWriting(f, off, n)
	}
	return f.ioErr("zero", off, n, err)
}

// Extents reports the holes of [off, off+n) as ExtentHole|ExtentZero and
// everything else as data, from SEEK_DATA and SEEK_HOLE. A filesystem
// without them (and a block device) reports all data. At most
// maxFileExtents extents are returned.
func (f *File) Extents(off, n int64) ([]Extent, error) {
	if err := f.check(off, n, false); err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, nil
	}
	end := off + n
	if f.block {
		return []Extent{{Off: off, Len: n}}, nil
	}
	var out []Extent
	add := func(e Extent) {
		if k := len(out) - 1; k >= 0 && out[k].Flags == e.Flags && out[k].Off+out[k].Len == e.Off {
			out[k].Len += e.Len
			return
		}
		out = append(out, e)
	}
	err := f.control(func(fd int) error {
		pos := off
		for pos < end && len(out) < maxFileExtents {
			data, err := syscall.Seek(fd, pos, seekData)
			switch {
			case errors.Is(err, syscall.ENXIO):
				// No data after pos. (The file may have been truncated
				// under us; reading it then fails, as it should.)
				data = end
			case errors.Is(err, syscall.EINVAL):
				// No SEEK_DATA support: everything is data.
				add(Extent{Off: pos, Len: end - pos})
				return nil
			case err != nil:
				return err
			}
			if data > pos {
				h := min(data, end)
				add(Extent{Off: pos, Len: h - pos, Flags: ExtentHole | ExtentZero})
				pos = h
				if pos >= end || len(out) >= maxFileExtents {
					break
				}
			}
			hole, err := syscall.Seek(fd, pos, seekHole)
			switch {
			case errors.Is(err, syscall.ENXIO):
				hole = end
			case err != nil:
				return err
			}
			if hole <= pos {
				// A hole appeared at pos since SEEK_DATA (a racing trim):
				// call it data, the safe answer, and move on.
				hole = min(pos+1, end)
			}
			d := min(hole, end)
			add(Extent{Off: pos, Len: d - pos})
			pos = d
		}
		return nil
	})
	if err != nil {
		return nil, f.ioErr("extents", off, n, err)
	}
	return out, nil
}

// ReadFileAt reads the file's bytes like io.ReaderAt, with no check
// against Size: short with io.EOF at the end of the file. Formats read
// their image files with it, so direct I/O's alignment is handled here.
func (f *File) ReadFileAt(p []byte, off int64) (int, error) {
	if f.closed.Load() {
		return 0, ErrClosed
	}
	return f.readAt(p, off)
}

// WriteFileAt writes the file's bytes like io.WriterAt, growing a regular
// file when p reaches past its end; Size is not changed (Reload reads it
// again). A full filesystem is an error wrapping ErrNoSpace.
func (f *File) WriteFileAt(p []byte, off int64) (int, error) {
	if f.closed.Load() {
		return 0, ErrClosed
	}
	if f.ro {
		return 0, ErrReadOnly
	}
	n, err := f.writeAt(p, off)
	if err != nil {
		err = mapNoSpace(err)
	}
	return n, err
}

// Sync makes the file's completed writes durable, as Flush does (nothing
// under CacheUnsafe), for formats writing through WriteFileAt.
func (f *File) Sync() error { return f.Flush() }

// Truncate sets a regular file's length, for formats growing or shrinking
// their image files; Size is not changed (Reload reads it again).
func (f *File) Truncate(n int64) error {
	if f.closed.Load() {
		return ErrClosed
	}
	if f.block {
		return fmt.Errorf("truncate %s: a block device: %w", f.path, ErrNotSupported)
	}
	f.extendMu.Lock()
	defer f.extendMu.Unlock()
	if err := f.f.Truncate(n); err != nil {
		return err
	}
	if f.align != 0 {
		f.flen.Store(n)
	}
	return nil
}
