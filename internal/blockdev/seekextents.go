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
