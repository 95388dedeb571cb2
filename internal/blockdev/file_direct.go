//go:build linux

package blockdev

import (
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Direct I/O (O_DIRECT, for CacheNone and CacheDirectSync).
//
// The kernel takes a direct read or write only when its file offset and
// length are multiples of the file's offset alignment (its logical block,
// from statx STATX_DIOALIGN) and its memory is aligned too. Aligned calls
// go straight to the file. Others go through a bounce buffer: a read reads
// the aligned blocks around it and copies out; a write reads the partial
// blocks at its edges, copies its bytes in and writes the blocks back.
// That read-modify-write holds the blocks exclusively in the File's range
// lock, and aligned writes hold their ranges shared, so that two writes
// touching one block never lose each other's bytes.
//
// A regular file may also grow (through WriteFileAt) or end mid-block. A
// write reaching past the file's known length takes extendMu, writes, and
// cuts the file back to the length it should have when whole blocks went
// past it; writes within the length never wait for it.

// bounceMax bounds one bounce buffer: larger unaligned calls go through it
// a piece at a time, so a 32 MiB request costs 1 MiB of bounce memory.
const bounceMax = 1 << 20

// bounceAlign is the memory alignment of bounce buffers: a page, which
// every device's DMA alignment divides.
const bounceAlign = 4096

// bouncePools hold bounce buffers in power-of-two classes from 4 KiB to
// bounceMax.
var bouncePools [9]sync.Pool

func bounceClass(n int) int {
	c := 0
	for s := 4096; s < n; s <<= 1 {
		c++
	}
	return c
}

// getBounce returns a page-aligned buffer of n bytes (n ≤ bounceMax) with
// arbitrary contents.
func getBounce(n int) *[]byte {
	c := bounceClass(n)
	if p, ok := bouncePools[c].Get().(*[]byte); ok {
		*p = (*p)[:n]
		return p
	}
	b := AlignedBuffer(4096<<c, bounceAlign)[:n]
	return &b
}

func putBounce(p *[]byte) { bouncePools[bounceClass(cap(*p))].Put(p) }

// fsNames names the file systems a refusal of O_DIRECT most likely comes
// from (statfs f_type).
var fsNames = map[int64]string{
	0x01021994: "tmpfs", 0x858458f6: "ramfs", 0x794c7630: "overlay",
	0x65735546: "FUSE", 0x01021997: "9p", 0x6969: "NFS", 0xef53: "ext4",
	0x58465342: "XFS", 0x9123683e: "Btrfs", 0x2fc12fc1: "ZFS", 0x73717368: "squashfs",
}

// fsName names the file system fd is on.
func fsName(fd int) string {
	var st unix.Statfs_t
	if unix.Fstatfs(fd, &st) != nil {
		return "its"
	}
	if n, ok := fsNames[int64(st.Type)]; ok {
		return n
	}
	return fmt.Sprintf("0x%x", uint64(st.Type))
}

// noDirect is the error of a file whose file system refuses O_DIRECT. The
// open fails rather than quietly falling back to the page cache (qemu fails
// too): the caller asked for no host caching, perhaps to keep the page cache
// free or to share the image coherently, and a warning in a daemon's log is
// easily missed.
func noDirect(fd int, path string, mode CacheMode, err error) error {
	return fmt.Errorf("open %s with --cache=%s: the %s file system does not support direct I/O (O_DIRECT): %w; use --cache=writeback",
		path, mode, fsName(fd), err)
}

// directInfo is what directSetup learned of a file opened for direct I/O;
// the zero value means no direct I/O.
type directInfo struct {
	align    int64     // offsets and lengths must be multiples of it
	memAlign int       // memory addresses must be multiples of it
	flen     int64     // a regular file's length; MaxInt64 for a device
	ring     *fileRing // --aio=io_uring
}

// directSetup sets O_DIRECT on fd when mode wants it and learns the
// alignment direct I/O needs. It runs before the File is made, so that a
// failure leaves fd to the caller alone.
func directSetup(fd int, path string, mode CacheMode, aio AIOMode, block bool) (directInfo, error) {
	if mode > CacheUnsafe || aio > AIOIOUring {
		return directInfo{}, fmt.Errorf("open %s: cache %v, aio %v", path, mode, aio)
	}
	d, err := directFlags(fd, path, mode, block)
	if err != nil || aio != AIOIOUring {
		return d, err
	}
	if d.ring, err = newFileRing(fd); err != nil {
		return directInfo{}, fmt.Errorf("open %s with --aio=io_uring: %w; use --aio=threads", path, err)
	}
	return d, nil
}

// directFlags sets O_DIRECT when mode wants it and learns its alignment.
func directFlags(fd int, path string, mode CacheMode, block bool) (directInfo, error) {
	if !mode.Direct() {
		return directInfo{}, nil
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return directInfo{}, fmt.Errorf("open %s: %w", path, err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl|unix.O_DIRECT); err != nil {
		return directInfo{}, noDirect(fd, path, mode, err)
	}
	d := directInfo{flen: math.MaxInt64}
	var stx unix.Statx_t
	if unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &stx) == nil && stx.Mask&unix.STATX_DIOALIGN != 0 {
		if stx.Dio_offset_align == 0 {
			return directInfo{}, noDirect(fd, path, mode, syscall.EINVAL)
		}
		d.align, d.memAlign = int64(stx.Dio_offset_align), int(stx.Dio_mem_align)
	}
	if d.align == 0 {
		// No STATX_DIOALIGN (before Linux 6.1, or a block device before
		// 6.11): a block device's logical block, else 4096, which every
		// device's logical block divides.
		d.align = 4096
		if lbs, err := unix.IoctlGetInt(fd, ioctlBLKSSZGET); block && err == nil && lbs >= 512 {
			d.align = int64(lbs)
		}
	}
	if d.align&(d.align-1) != 0 || d.align > bounceMax {
		return directInfo{}, fmt.Errorf("open %s: direct I/O alignment %d is not a power of two up to %d", path, d.align, bounceMax)
	}
	if d.memAlign <= 0 || d.memAlign&(d.memAlign-1) != 0 {
		d.memAlign = bounceAlign
	}
	if !block {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return directInfo{}, fmt.Errorf("open %s: stat: %w", path, err)
		}
		d.flen = st.Size
	}
	return d, nil
}

// applyCache sets the new File's cache mode and direct I/O state.
func (f *File) applyCache(mode CacheMode, d directInfo) {
	f.cache = mode
	f.ring = d.ring
	if d.align == 0 {
		return
	}
	f.align, f.memAlign = d.align, d.memAlign
	f.locks = NewRangeLock()
	f.flen.Store(d.flen)
	f.info.LogicalBlockSize = uint32(max(d.align, 512))
	f.info.PhysicalBlockSize = max(f.info.PhysicalBlockSize, f.info.LogicalBlockSize)
}

// Cache returns the File's cache mode.
func (f *File) Cache() CacheMode { return f.cache }

// AIO returns the File's I/O mode.
func (f *File) AIO() AIOMode {
	if f.ring != nil {
		return AIOIOUring
	}
	return AIOThreads
}

// DirectAlign returns the alignment of offsets and lengths that direct I/O
// takes without a bounce buffer, 0 when the File is not direct.
func (f *File) DirectAlign() int64 { return f.align }

// aligned reports whether p at off can go to the file directly.
func (f *File) aligned(p []byte, off int64) bool {
	m := f.align - 1
	return off&m == 0 && int64(len(p))&m == 0 && isAligned(p, f.memAlign)
}

// withFd runs fn with the descriptor, which stays open while fn runs.
func (f *File) withFd(fn func(fd int) (int, error)) (int, error) {
	var n int
	var ferr error
	if err := f.rc.Control(func(fd uintptr) { n, ferr = fn(int(fd)) }); err != nil {
		return 0, err
	}
	return n, ferr
}

// rawRead is one pread of b at off.
func (f *File) rawRead(b []byte, off int64) (int, error) {
	if f.ring != nil {
		return f.ring.rw(false, false, b, off)
	}
	return f.withFd(func(fd int) (int, error) {
		for {
			n, err := unix.Pread(fd, b, off)
			if err != syscall.EINTR {
				return n, err
			}
		}
	})
}

// rawWrite is one pwrite of b at off (with RWF_DSYNC under
// CacheDirectSync).
func (f *File) rawWrite(b []byte, off int64) (int, error) {
	if f.ring != nil {
		return f.ring.rw(true, f.cache == CacheDirectSync, b, off)
	}
	return f.withFd(func(fd int) (int, error) {
		for {
			var n int
			var err error
			if f.cache == CacheDirectSync {
				n, err = unix.Pwritev2(fd, [][]byte{b}, off, unix.RWF_DSYNC)
			} else {
				n, err = unix.Pwrite(fd, b, off)
			}
			if err != syscall.EINTR {
				return n, err
			}
		}
	})
}

// readFull reads b at off until it is full or the file ends (then the
// count is short and the error io.EOF). Under direct I/O a short read
// leaving an unaligned rest is the end of the file.
func (f *File) readFull(b []byte, off int64) (int, error) {
	done := 0
	for done < len(b) {
		n, err := f.rawRead(b[done:], off+int64(done))
		if err != nil {
			return done, err
		}
		if n <= 0 {
			return done, io.EOF
		}
		done += n
		if done < len(b) && f.align != 0 && int64(done)&(f.align-1) != 0 {
			return done, io.EOF
		}
	}
	return done, nil
}

// writeFull writes all of b at off.
func (f *File) writeFull(b []byte, off int64) (int, error) {
	done := 0
	for done < len(b) {
		n, err := f.rawWrite(b[done:], off+int64(done))
		if err != nil {
			return done, err
		}
		if n <= 0 {
			return done, io.ErrShortWrite
		}
		done += n
	}
	return done, nil
}

// readAt reads like io.ReaderAt: short with io.EOF at the end of the file.
func (f *File) readAt(p []byte, off int64) (int, error) {
	switch {
	case f.align != 0:
		return f.readDirect(p, off)
	case f.ring != nil:
		return f.readFull(p, off)
	}
	return f.f.ReadAt(p, off)
}

// writeAt writes like io.WriterAt, growing a regular file.
func (f *File) writeAt(p []byte, off int64) (int, error) {
	switch {
	case f.align != 0:
		return f.writeDirect(p, off)
	case f.ring != nil:
		return f.writeFull(p, off)
	}
	return f.f.WriteAt(p, off)
}

// readDirect reads p at off under O_DIRECT.
func (f *File) readDirect(p []byte, off int64) (int, error) {
	if f.aligned(p, off) {
		return f.readFull(p, off)
	}
	m := f.align - 1
	end := off + int64(len(p))
	done := 0
	for done < len(p) {
		o := off + int64(done)
		a := o &^ m
		e := min((end+m)&^m, a+bounceMax)
		bp := getBounce(int(e - a))
		n, err := f.readFull(*bp, a)
		want := int(min(end, e) - o)
		got := min(max(n-int(o-a), 0), want)
		copy(p[done:done+got], (*bp)[o-a:])
		putBounce(bp)
		done += got
		if err != nil && !errors.Is(err, io.EOF) {
			return done, err
		}
		if got < want {
			return done, io.EOF
		}
	}
	return done, nil
}

// writeDirect writes p at off under O_DIRECT.
func (f *File) writeDirect(p []byte, off int64) (int, error) {
	end := off + int64(len(p))
	if end <= f.flen.Load() {
		return f.writeLocked(p, off)
	}
	// The write may grow the file, or end in its last, partial block.
	f.extendMu.Lock()
	defer f.extendMu.Unlock()
	var st unix.Stat_t
	if _, err := f.withFd(func(fd int) (int, error) { return 0, unix.Fstat(fd, &st) }); err != nil {
		return 0, err
	}
	n, err := f.writeLocked(p, off)
	want := max(st.Size, off+int64(n))
	m := f.align - 1
	if reached := (off + int64(n) + m) &^ m; reached > want {
		// Whole blocks were written past where the file should end.
		if _, terr := f.withFd(func(fd int) (int, error) { return 0, unix.Ftruncate(fd, want) }); terr != nil && err == nil {
			err = terr
		}
	}
	f.flen.Store(want)
	return n, err
}

// writeLocked writes p at off under the range lock: aligned writes hold
// their range shared, others read-modify-write their edge blocks holding
// them exclusively.
func (f *File) writeLocked(p []byte, off int64) (int, error) {
	end := off + int64(len(p))
	if f.aligned(p, off) {
		lk := f.locks.Lock(off, end, false)
		defer f.locks.Unlock(lk)
		return f.writeFull(p, off)
	}
	m := f.align - 1
	a, e := off&^m, (end+m)&^m
	lk := f.locks.Lock(a, e, true)
	defer f.locks.Unlock(lk)
	done := 0
	for pos := a; pos < e; {
		ce := min(e, pos+bounceMax)
		bp := getBounce(int(ce - pos))
		buf := *bp
		if off > pos {
			if err := f.readBlock(buf[:f.align], pos); err != nil {
				putBounce(bp)
				return done, err
			}
		}
		if end < ce && !(off > pos && ce-pos == f.align) {
			if err := f.readBlock(buf[len(buf)-int(f.align):], ce-f.align); err != nil {
				putBounce(bp)
				return done, err
			}
		}
		from, to := max(off, pos), min(end, ce)
		copy(buf[from-pos:], p[from-off:to-off])
		_, err := f.writeFull(buf, pos)
		putBounce(bp)
		if err != nil {
			return done, err
		}
		done += int(to - from)
		pos = ce
	}
	return done, nil
}

// readBlock reads one aligned block at off into b, with zeroes past the
// end of the file.
func (f *File) readBlock(b []byte, off int64) error {
	n, err := f.readFull(b, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	clear(b[n:])
	return nil
}
