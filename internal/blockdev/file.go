//go:build linux

package blockdev

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// createMode is the permission a created image gets (before the umask): an
// image may hold anything its user writes, so only its owner may read it.
const createMode = 0o600

// Block device ioctls (linux/fs.h).
const (
	ioctlBLKSSZGET    = 0x1268     // BLKSSZGET: logical sector size, int
	ioctlBLKPBSZGET   = 0x127b     // BLKPBSZGET: physical sector size, unsigned int
	ioctlBLKGETSIZE64 = 0x80081272 // BLKGETSIZE64: size in bytes, u64
)

// FileOptions say how OpenFile opens an image.
type FileOptions struct {
	// ReadOnly opens the file read-only, under a shared lock: writes fail
	// with ErrReadOnly.
	ReadOnly bool
	// Create creates the file, sparse and Size bytes long, when it does not
	// exist. An existing file is opened as it is.
	Create bool
	// Size is the size of a created file: positive, a multiple of 512.
	// It is ignored when the file exists.
	Size int64
	// NoLock skips the flock, for callers that lock by themselves.
	NoLock bool
	// RegularOnly refuses block devices too: for files an image names,
	// which must be plain files.
	RegularOnly bool
	// Cache is how the page cache is used and what Flush does; the zero
	// value is CacheWriteback. CacheNone and CacheDirectSync fail on a
	// file system without O_DIRECT.
	Cache CacheMode
	// AIO is how reads, writes and flushes are issued; the zero value is
	// AIOThreads. AIOIOUring fails where io_uring is missing or forbidden.
	AIO AIOMode
}

// File is a Device over a raw image: a regular file or a block device.
//
// Reads and writes go straight to pread and pwrite with no lock of the
// File's own, so any number may run in parallel. Flush is fdatasync; Trim
// punches a hole; WriteZeroes zeroes or punches; Extents reports holes
// found with SEEK_DATA and SEEK_HOLE. A writable File holds an exclusive
// flock on the image and a read-only one a shared lock, so that two writers,
// or a writer and a reader, never have the same image open.
//
// All methods may be called concurrently; Close must not race with other
// calls still in flight (those fail with ErrClosed or complete, but Close's
// flush may not cover them).
type File struct {
	f     *os.File
	path  string
	size  atomic.Int64 // changes only by Resize
	ro    bool
	block bool // a block device, not a regular file
	info  Info

	cache    CacheMode
	ring     *fileRing // --aio=io_uring; nil for threads
	rc       syscall.RawConn
	align    int64 // direct I/O offset alignment; 0 when not direct
	memAlign int   // direct I/O memory alignment
	locks    *RangeLock
	extendMu sync.Mutex   // held by direct writes that may grow the file
	flen     atomic.Int64 // a regular file's length, as direct writes know it

	closed atomic.Bool
}

var (
	_ Device     = (*File)(nil)
	_ Trimmer    = (*File)(nil)
	_ ZeroWriter = (*File)(nil)
	_ Extenter   = (*File)(nil)
	_ Resizer    = (*File)(nil)
	_ Describer  = (*File)(nil)
)

// OpenFile opens the raw image at path: a regular file, or a block device
// (whose size comes from BLKGETSIZE64). With opt.Create a missing file is
// created sparse, of opt.Size bytes. An image locked by another open fails
// with an error wrapping ErrLocked.
func OpenFile(path string, opt FileOptions) (*File, error) {
	if opt.Create {
		if opt.ReadOnly {
			return nil, fmt.Errorf("open %s: cannot create an image read-only", path)
		}
		if opt.Size <= 0 || opt.Size%512 != 0 {
			if _, err := os.Stat(path); err == nil {
				return openFile(path, opt) // Size is ignored for an existing file
			}
			return nil, fmt.Errorf("create %s: size %d is not a positive multiple of 512 bytes", path, opt.Size)
		}
		f, err := createFile(path, opt)
		if err == nil || !errors.Is(err, fs.ErrExist) {
			return f, err
		}
		// It exists (perhaps created a moment ago by someone else): open it.
	}
	return openFile(path, opt)
}

// createFile creates path exclusively, locks it and sizes it. It returns an
// error wrapping fs.ErrExist when the file already exists.
func createFile(path string, opt FileOptions) (*File, error) {
	fd, err := syscall.Open(path, syscall.O_RDWR|syscall.O_CREAT|syscall.O_EXCL|syscall.O_CLOEXEC, createMode)
	if err != nil {
		if errors.Is(err, syscall.EEXIST) {
			return nil, fmt.Errorf("create %s: %w", path, fs.ErrExist)
		}
		if errors.Is(err, syscall.ENOENT) {
			parent := filepath.Dir(path)
			if _, serr := os.Stat(parent); serr != nil {
				return nil, fmt.Errorf("create %s: directory %s does not exist", path, parent)
			}
		}
		return nil, fmt.Errorf("create %s: %w", path, mapNoSpace(err))
	}
	if !opt.NoLock {
		if err := lockFd(fd, path, false); err != nil {
			// Someone opened the new file between our create and lock:
			// it is theirs now, so leave it.
			syscall.Close(fd)
			return nil, err
		}
	}
	// From here on the file is ours alone, and a failure removes it.
	fail := func(err error) (*File, error) {
		syscall.Close(fd)
		os.Remove(path)
		return nil, err
	}
	if err := syscall.Ftruncate(fd, opt.Size); err != nil {
		if errors.Is(err, syscall.EFBIG) {
			return fail(fmt.Errorf("create %s: size %d is too large for the filesystem: %w", path, opt.Size, err))
		}
		return fail(fmt.Errorf("create %s: set size %d: %w", path, opt.Size, mapNoSpace(err)))
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return fail(fmt.Errorf("create %s: stat: %w", path, err))
	}
	dio, err := directSetup(fd, path, opt.Cache, opt.AIO, false)
	if err != nil {
		return fail(err)
	}
	return newFile(fd, path, opt.Size, false, false, &st, opt.Cache, dio), nil
}

// openFile opens an existing image.
func openFile(path string, opt FileOptions) (*File, error) {
	flags := syscall.O_RDWR
	if opt.ReadOnly {
		flags = syscall.O_RDONLY
	}
	// O_NONBLOCK so that a FIFO put in the image's place cannot hang the
	// open; it is cleared once the type is known to be a file or device.
	fd, err := syscall.Open(path, flags|syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	if err != nil {
		switch {
		case errors.Is(err, syscall.ENOENT):
			return nil, fmt.Errorf("open %s: image does not exist: %w", path, fs.ErrNotExist)
		case errors.Is(err, syscall.EISDIR):
			return nil, fmt.Errorf("open %s: is a directory, not an image", path)
		case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
			return nil, fmt.Errorf("open %s: %w", path, fs.ErrPermission)
		case errors.Is(err, syscall.EROFS):
			return nil, fmt.Errorf("open %s: the filesystem is read-only (open the image read-only): %w", path, err)
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	f, err := setupFile(fd, path, opt)
	if err != nil {
		syscall.Close(fd)
		return nil, err
	}
	return f, nil
}

// FromFD makes a File of fd, a descriptor opened by the caller (with
// O_NONBLOCK, so that a FIFO could not block the open): it checks what fd
// is, clears O_NONBLOCK, locks it as OpenFile does and takes ownership of
// fd. On error fd is left open for the caller to close.
func FromFD(fd int, path string, opt FileOptions) (*File, error) {
	return setupFile(fd, path, opt)
}

// setupFile checks what fd is, locks it and builds the File.
func setupFile(fd int, path string, opt FileOptions) (*File, error) {
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("open %s: stat: %w", path, err)
	}
	var size int64
	block := false
	switch st.Mode & syscall.S_IFMT {
	case syscall.S_IFREG:
		size = st.Size
	case syscall.S_IFBLK:
		if opt.RegularOnly {
			return nil, fmt.Errorf("open %s: a block device, not a regular file", path)
		}
		block = true
		var sz uint64
		if err := ioctlPtr(fd, ioctlBLKGETSIZE64, unsafe.Pointer(&sz)); err != nil {
			return nil, fmt.Errorf("open %s: block device size: %w", path, err)
		}
		size = int64(sz)
	case syscall.S_IFDIR:
		return nil, fmt.Errorf("open %s: is a directory, not an image", path)
	case syscall.S_IFIFO:
		return nil, fmt.Errorf("open %s: a FIFO, not an image file", path)
	case syscall.S_IFSOCK:
		return nil, fmt.Errorf("open %s: a socket, not an image file", path)
	case syscall.S_IFCHR:
		return nil, fmt.Errorf("open %s: a character device, not an image file", path)
	default:
		return nil, fmt.Errorf("open %s: not a regular file or block device", path)
	}
	if err := syscall.SetNonblock(fd, false); err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if !opt.NoLock {
		if err := lockFd(fd, path, opt.ReadOnly); err != nil {
			return nil, err
		}
	}
	dio, err := directSetup(fd, path, opt.Cache, opt.AIO, block)
	if err != nil {
		return nil, err
	}
	return newFile(fd, path, size, opt.ReadOnly, block, &st, opt.Cache, dio), nil
}

// LockFile takes the image lock on an open file without waiting: flock,
// shared for a reader and exclusive for a writer, as OpenFile does. A lock
// another process holds is an error wrapping ErrLocked that names the file.
// Formats that open their own files call it, so every image is locked the
// same way.
func LockFile(f *os.File, readOnly bool) error {
	return lockFd(int(f.Fd()), f.Name(), readOnly)
}

// lockFd takes flock on fd without waiting: shared for readers, exclusive
// for writers.
func lockFd(fd int, path string, shared bool) error {
	how := syscall.LOCK_EX
	if shared {
		how = syscall.LOCK_SH
	}
	for {
		err := syscall.Flock(fd, how|syscall.LOCK_NB)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, syscall.EINTR):
			continue
		case errors.Is(err, syscall.EWOULDBLOCK):
			return fmt.Errorf("open %s: %w", path, ErrLocked)
		default:
			return fmt.Errorf("open %s: lock: %w", path, err)
		}
	}
}

func newFile(fd int, path string, size int64, ro, block bool, st *syscall.Stat_t, cache CacheMode, dio directInfo) *File {
	f := &File{
		f:     os.NewFile(uintptr(fd), path),
		path:  path,
		ro:    ro,
		block: block,
	}
	f.size.Store(size)
	f.info = Info{LogicalBlockSize: 512, PhysicalBlockSize: clampBlock(int64(st.Blksize)), ReadOnly: ro}
	if block {
		var lbs, pbs int32
		if ioctlPtr(fd, ioctlBLKSSZGET, unsafe.Pointer(&lbs)) == nil && lbs >= 512 {
			f.info.LogicalBlockSize = uint32(lbs)
		}
		if ioctlPtr(fd, ioctlBLKPBSZGET, unsafe.Pointer(&pbs)) == nil && pbs >= 512 {
			f.info.PhysicalBlockSize = clampBlock(int64(pbs))
		}
		if f.info.PhysicalBlockSize < f.info.LogicalBlockSize {
			f.info.PhysicalBlockSize = f.info.LogicalBlockSize
		}
	}
	f.rc, _ = f.f.SyscallConn() // cannot fail for a file
	f.applyCache(cache, dio)
	return f
}

// maxPhysicalBlock bounds the physical block size reported from st_blksize,
// which some filesystems set to their stripe or object size.
const maxPhysicalBlock = 64 << 10

// clampBlock turns a preferred I/O size into a power of two in
// [512, maxPhysicalBlock]; anything else becomes 4096.
func clampBlock(b int64) uint32 {
	if b <= 0 || b&(b-1) != 0 {
		return 4096
	}
	return uint32(min(max(b, 512), maxPhysicalBlock))
}

func ioctlPtr(fd int, req uintptr, p unsafe.Pointer) error {
	_, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), req, uintptr(p))
	if e != 0 {
		return e
	}
	return nil
}

// mapNoSpace wraps ErrNoSpace around an ENOSPC (or EDQUOT) error.
func mapNoSpace(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: %w", ErrNoSpace, err)
	}
	return err
}

// Fd returns the file descriptor. It stays owned by the File: do not close
// it, and do not use it after Close.
func (f *File) Fd() uintptr { return f.f.Fd() }

// OS returns the open file. It stays owned by the File: do not close it,
// and do not use it after Close.
func (f *File) OS() *os.File { return f.f }

// IsBlockDevice reports whether the File is a block device.
func (f *File) IsBlockDevice() bool { return f.block }

// Reload reads a regular file's size again, after it was changed through
// OS (an image format writing its file before serving it raw).
func (f *File) Reload() error {
	if f.block {
		return nil
	}
	f.extendMu.Lock()
	defer f.extendMu.Unlock()
	st, err := f.f.Stat()
	if err != nil {
		return fmt.Errorf("stat %s: %w", f.path, err)
	}
	f.size.Store(st.Size())
	if f.align != 0 {
		f.flen.Store(st.Size())
	}
	return nil
}

// Path returns the path the File was opened with.
func (f *File) Path() string { return f.path }

// Size returns the image's size in bytes.
func (f *File) Size() int64 { return f.size.Load() }

// Info reports 512-byte logical blocks (a block device's own sizes), the
// filesystem's preferred I/O size as the physical block size, and whether
// the File is read-only.
func (f *File) Info() Info { return f.info }

// Resize truncates or extends a regular file to size bytes; a block
// device's size is not ours to change.
func (f *File) Resize(size int64) error {
	switch {
	case f.closed.Load():
		return ErrClosed
	case f.ro:
		return ErrReadOnly
	case f.block:
		return fmt.Errorf("resize %s: a block device: %w", f.path, ErrNotSupported)
	case size < 0:
		return fmt.Errorf("resize %s to %d bytes: %w", f.path, size, ErrOutOfRange)
	}
	f.extendMu.Lock()
	if err := f.f.Truncate(size); err != nil {
		f.extendMu.Unlock()
		return fmt.Errorf("resize %s: %w", f.path, err)
	}
	if f.align != 0 {
		f.flen.Store(size)
	}
	f.extendMu.Unlock()
	if err := f.Flush(); err != nil {
		return err
	}
	f.size.Store(size)
	return nil
}
