package image

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"

	"vdisk/internal/blockdev"
)

// File is the bytes of one image file, wherever they live: a local file
// (LocalFile) or an object store's chunks (BackendFile). Every format
// opens, creates, checks and describes images through a File, never a
// path, so every format works wherever a File can be had.
//
// ReadAt and WriteAt follow io.ReaderAt and io.WriterAt: a read reaching
// past the end is short with io.EOF, a write past the end extends the
// file. All methods are safe for concurrent use.
type File interface {
	io.ReaderAt
	io.WriterAt
	// Size is the file's current length.
	Size() (int64, error)
	// Truncate sets the file's length.
	Truncate(n int64) error
	// Sync makes every completed write, and the length, durable.
	Sync() error
	// Close releases the file (and its lock).
	Close() error
	// Name names the file in messages: its path, or its URL.
	Name() string
}

// Puncher is a File that can release the storage of a range, which then
// reads as zeroes. Without it a format writes zeroes.
type Puncher interface {
	Punch(off, n int64) error
}

// Allocated is a File that knows how many bytes of storage it really
// uses (Facts.DiskSize); without it the length is reported.
type Allocated interface {
	Allocated() int64
}

// Identified is a File with an identity that two names of the same file
// share (device and inode), used to find loops in a backing chain;
// without it the Name is used.
type Identified interface {
	Identity() string
}

// RawFile is a File that can serve itself as a raw disk directly, faster
// than through ReadAt and WriteAt: a local file as a blockdev.File, an
// object store's chunks as their own Device. The raw format uses it.
type RawFile interface {
	File
	// RawDevice returns the disk that the file's bytes are. It takes
	// ownership of the file: closing the Device closes the file.
	RawDevice() (blockdev.Device, error)
}

// Punch releases a range of f, or writes zeroes over it when f cannot
// release storage.
func Punch(f File, off, n int64) error {
	if p, ok := f.(Puncher); ok {
		return p.Punch(off, n)
	}
	zero := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, int64(len(zero)))
		if _, err := f.WriteAt(zero[:k], off); err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return nil
}

// DiskSize is the storage f uses: Allocated when f knows it, else its
// length.
func DiskSize(f File) int64 {
	if a, ok := f.(Allocated); ok {
		return a.Allocated()
	}
	n, _ := f.Size()
	return n
}

// identity is f's Identity, or its Name.
func identity(f File) string {
	if i, ok := f.(Identified); ok {
		return i.Identity()
	}
	return f.Name()
}

// LocalFile is a File on a local filesystem (or a block device, for an
// image the user named). It holds the image lock (shared for readers,
// exclusive for writers) until closed.
type LocalFile struct {
	bf *blockdev.File
}

var (
	_ File         = (*LocalFile)(nil)
	_ Puncher      = (*LocalFile)(nil)
	_ Allocated    = (*LocalFile)(nil)
	_ Identified   = (*LocalFile)(nil)
	_ RawFile      = (*LocalFile)(nil)
	_ FileExtenter = (*LocalFile)(nil)
)

// LocalOptions say how OpenLocal opens a file.
type LocalOptions struct {
	// ReadOnly opens without write access, under a shared lock.
	ReadOnly bool
	// NoLock skips the lock.
	NoLock bool
	// RegularOnly refuses block devices (for files an image names).
	RegularOnly bool
	// Cache and AIO are the file's cache and I/O modes.
	Cache blockdev.CacheMode
	AIO   blockdev.AIOMode
}

// OpenLocal opens the image file at path. It never blocks: the open is
// O_NONBLOCK and what was opened is checked with fstat on the descriptor,
// so a FIFO, socket, character device or directory is refused with a
// message naming it; so is a block device with RegularOnly.
func OpenLocal(path string, o LocalOptions) (*LocalFile, error) {
	bf, err := blockdev.OpenFile(path, blockdev.FileOptions{ReadOnly: o.ReadOnly, NoLock: o.NoLock, RegularOnly: o.RegularOnly, Cache: o.Cache, AIO: o.AIO})
	if err != nil {
		return nil, err
	}
	return &LocalFile{bf: bf}, nil
}

// CreateLocal creates the image file at path, which must not exist: mode
// 0600 (an image holds whatever its guest wrote), locked exclusively,
// and its directory synced so the new name survives a crash.
func CreateLocal(path string) (*LocalFile, error) {
	fd, err := syscall.Open(path, syscall.O_RDWR|syscall.O_CREAT|syscall.O_EXCL|syscall.O_CLOEXEC|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		if errors.Is(err, syscall.EEXIST) {
			return nil, fmt.Errorf("create %s: %w", path, os.ErrExist)
		}
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	bf, err := blockdev.FromFD(fd, path, blockdev.FileOptions{RegularOnly: true})
	if err != nil {
		syscall.Close(fd)
		os.Remove(path)
		return nil, err
	}
	if err := SyncDir(filepath.Dir(path)); err != nil {
		bf.Close()
		os.Remove(path)
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	return &LocalFile{bf: bf}, nil
}

// SyncDir makes the entries of the directory dir durable (after a create
// or a rename in it).
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// ReadAt reads like os.File.ReadAt (through the File, which handles direct
// I/O's alignment).
func (f *LocalFile) ReadAt(p []byte, off int64) (int, error) { return f.bf.ReadFileAt(p, off) }

// WriteAt writes like os.File.WriteAt, extending the file.
func (f *LocalFile) WriteAt(p []byte, off int64) (int, error) {
	return f.bf.WriteFileAt(p, off)
}

// Size returns the file's length (a block device's size).
func (f *LocalFile) Size() (int64, error) {
	if f.bf.IsBlockDevice() {
		return f.bf.Size(), nil
	}
	st, err := f.bf.OS().Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// Truncate sets the file's length.
func (f *LocalFile) Truncate(n int64) error {
	if f.bf.IsBlockDevice() {
		return fmt.Errorf("truncate %s: a block device: %w", f.Name(), blockdev.ErrNotSupported)
	}
	return f.bf.Truncate(n)
}

// Sync calls fdatasync (nothing under --cache=unsafe).
func (f *LocalFile) Sync() error { return f.bf.Sync() }

// Close closes the file and releases its lock.
func (f *LocalFile) Close() error { return f.bf.Close() }

// Name returns the path the file was opened by.
func (f *LocalFile) Name() string { return f.bf.Path() }

// OS returns the open file, owned by f.
func (f *LocalFile) OS() *os.File { return f.bf.OS() }

// Punch punches a hole over [off, off+n) (within the file's length).
func (f *LocalFile) Punch(off, n int64) error {
	if n <= 0 {
		return nil
	}
	err := unix.Fallocate(int(f.bf.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if errors.Is(err, syscall.EOPNOTSUPP) {
		return Punch(struct{ File }{f}, off, n)
	}
	return err
}

// Allocated returns the bytes the file's blocks take.
func (f *LocalFile) Allocated() int64 {
	st, err := f.bf.OS().Stat()
	if err != nil {
		return 0
	}
	if s, ok := st.Sys().(*syscall.Stat_t); ok && st.Mode().IsRegular() {
		return s.Blocks * 512
	}
	return st.Size()
}

// Extents describes the file's bytes in [off, off+n): its holes (from
// SEEK_DATA and SEEK_HOLE) as blockdev.ExtentHole|ExtentZero, the rest
// as data; a block device, or a filesystem without SEEK_DATA, is all
// data. Formats' block status asks it where qemu asks the file driver.
func (f *LocalFile) Extents(off, n int64) ([]blockdev.Extent, error) {
	if off < 0 || n < 0 {
		return nil, fmt.Errorf("extents of %s at %d, %d bytes: %w", f.Name(), off, n, blockdev.ErrOutOfRange)
	}
	if f.bf.IsBlockDevice() {
		return []blockdev.Extent{{Off: off, Len: n}}, nil
	}
	var out []blockdev.Extent
	blockdev.FileExtents(f.bf.OS(), off, n, off, func(o, l int64, fl blockdev.ExtentFlags) {
		out = blockdev.AppendExtent(out, o, l, fl)
	})
	return out, nil
}

// Identity is the file's device and inode.
func (f *LocalFile) Identity() string {
	st, err := f.bf.OS().Stat()
	if err != nil {
		return f.Name()
	}
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return fmt.Sprintf("dev %d inode %d", s.Dev, s.Ino)
	}
	return f.Name()
}

// Dir is the directory the file was opened in, made absolute.
func (f *LocalFile) Dir() (string, error) {
	abs, err := filepath.Abs(f.Name())
	if err != nil {
		return "", err
	}
	return filepath.Dir(abs), nil
}

// RawDevice serves the file as a raw disk (blockdev.File: pread, pwrite,
// holes, SEEK_DATA).
func (f *LocalFile) RawDevice() (blockdev.Device, error) {
	if err := f.bf.Reload(); err != nil {
		return nil, err
	}
	return f.bf, nil
}

// DeviceFile presents a fixed-size Device (a raw image in an object store)
// as a File: its bytes are the disk's, it cannot grow, and the raw format
// serves the Device itself.
type DeviceFile struct {
	dev  blockdev.Device
	name string
}

var _ RawFile = (*DeviceFile)(nil)

// NewDeviceFile returns the File view of dev; name labels it in messages.
func NewDeviceFile(dev blockdev.Device, name string) *DeviceFile {
	return &DeviceFile{dev: dev, name: name}
}

// ReadAt reads like a file: short with io.EOF at the end.
func (f *DeviceFile) ReadAt(p []byte, off int64) (int, error) {
	return readBefore(f.dev, p, off, f.dev.Size())
}

// readBefore reads p at off from dev like a file of length bytes: what
// lies before the end, and io.EOF when p reaches past it.
func readBefore(dev blockdev.Device, p []byte, off, length int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("image: read at negative offset %d: %w", off, blockdev.ErrOutOfRange)
	}
	n := int(max(0, min(int64(len(p)), length-off)))
	if n > 0 {
		if _, err := dev.ReadAt(p[:n], off); err != nil {
			return 0, err
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt writes within the device.
func (f *DeviceFile) WriteAt(p []byte, off int64) (int, error) { return f.dev.WriteAt(p, off) }

// Size is the device's size.
func (f *DeviceFile) Size() (int64, error) { return f.dev.Size(), nil }

// Truncate resizes the device when it can be resized.
func (f *DeviceFile) Truncate(n int64) error {
	r, ok := f.dev.(blockdev.Resizer)
	if !ok {
		return fmt.Errorf("truncate %s: %w", f.name, blockdev.ErrNotSupported)
	}
	return r.Resize(n)
}

// Sync flushes the device.
func (f *DeviceFile) Sync() error { return f.dev.Flush() }

// Close closes the device.
func (f *DeviceFile) Close() error { return f.dev.Close() }

// Name names the device.
func (f *DeviceFile) Name() string { return f.name }

// Punch trims the range.
func (f *DeviceFile) Punch(off, n int64) error { return blockdev.WriteZeroes(f.dev, off, n, true) }

// RawDevice returns the device.
func (f *DeviceFile) RawDevice() (blockdev.Device, error) { return f.dev, nil }

// AsDevice serves the bytes of f as a raw disk of f's current size: the
// file's own RawDevice when it has one, else reads and writes through f.
// The Device owns f. readOnly refuses writes.
func AsDevice(f File, readOnly bool) (blockdev.Device, error) {
	var dev blockdev.Device
	if rf, ok := f.(RawFile); ok {
		d, err := rf.RawDevice()
		if err != nil {
			return nil, err
		}
		dev = d
	} else {
		n, err := f.Size()
		if err != nil {
			return nil, err
		}
		dev = &fileDevice{f: f, size: n}
	}
	if readOnly && !blockdev.InfoOf(dev).ReadOnly {
		dev = blockdev.ReadOnly(dev)
	}
	return dev, nil
}

// fileDevice is a fixed-size Device over a File without a RawDevice.
type fileDevice struct {
	f    File
	size int64
}

func (d *fileDevice) Size() int64 { return d.size }

func (d *fileDevice) Info() blockdev.Info {
	return blockdev.Info{LogicalBlockSize: 512, PhysicalBlockSize: 4096}
}

func (d *fileDevice) ReadAt(p []byte, off int64) (int, error) {
	if err := blockdev.CheckRange(off, int64(len(p)), d.size); err != nil {
		return 0, err
	}
	n, err := d.f.ReadAt(p, off)
	if errors.Is(err, io.EOF) {
		clear(p[n:]) // past the file's end, within the disk: zeroes
		return len(p), nil
	}
	return n, err
}

func (d *fileDevice) WriteAt(p []byte, off int64) (int, error) {
	if err := blockdev.CheckRange(off, int64(len(p)), d.size); err != nil {
		return 0, err
	}
	return d.f.WriteAt(p, off)
}

func (d *fileDevice) Flush() error { return d.f.Sync() }

func (d *fileDevice) Close() error { return d.f.Close() }

func (d *fileDevice) Trim(off, n int64) error {
	if err := blockdev.CheckRange(off, n, d.size); err != nil {
		return err
	}
	return Punch(d.f, off, n)
}
