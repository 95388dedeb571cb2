package blockdev

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// FileExtents adds the extents of the file range [off, off+n), reported at
// guest offset guest: holes of the file (found with SEEK_DATA and
// SEEK_HOLE) read as zeroes, the rest is data. A file system without
// SEEK_DATA gets one data extent. lseek moves only the file offset, which
// pread and pwrite ignore, so this is safe beside other I/O.
func FileExtents(f *os.File, off, n, guest int64, add func(o, l int64, fl ExtentFlags)) {
	fd := int(f.Fd())
	for end := off + n; off < end; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			data = end
		} else if err != nil {
			add(guest, end-off, 0)
			return
		}
		data = min(data, end)
		if data > off {
			add(guest, data-off, ExtentHole|ExtentZero)
			guest += data - off
			off = data
			continue
		}
		hole, err := unix.Seek(fd, off, unix.SEEK_HOLE)
		if err != nil {
			hole = end
		}
		hole = min(max(hole, off+1), end)
		add(guest, hole-off, 0)
		guest += hole - off
		off = hole
	}
}

// ZeroFileRange makes n bytes of the file at off read as zeroes: with
// mayTrim by punching a hole, otherwise with FALLOC_FL_ZERO_RANGE, which
// keeps the blocks allocated; where the filesystem refuses the mode, zero
// bytes are written. A full filesystem is reported as ErrNoSpace. Formats
// use it for the file ranges under a zeroed or trimmed guest range.
func ZeroFileRange(f *os.File, off, n int64, mayTrim bool) error {
	mode := uint32(unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE)
	if mayTrim {
		mode = unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE
	}
	err := unix.Fallocate(int(f.Fd()), mode, off, n)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) {
		return mapNoSpace(err)
	}
	for n > 0 {
		c := min(n, zeroChunk)
		if _, err := f.WriteAt(zeroBuf[:c], off); err != nil {
			return mapNoSpace(err)
		}
		off += c
		n -= c
	}
	return nil
}

// AppendExtent appends the extent [off, off+n) with flags f to out, merged
// into the last extent when that one ends at off with the same flags.
func AppendExtent(out []Extent, off, n int64, f ExtentFlags) []Extent {
	if k := len(out); k > 0 && out[k-1].Flags == f && out[k-1].Off+out[k-1].Len == off {
		out[k-1].Len += n
		return out
	}
	return append(out, Extent{Off: off, Len: n, Flags: f})
}
