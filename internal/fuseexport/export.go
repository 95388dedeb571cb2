// Package fuseexport exposes one blockdev.Device as one regular file in a
// FUSE mount, so that a loop device can be attached to it: the way every
// device stack that is not a plain raw file (image formats, encryption,
// overlays) reaches the kernel's block layer.
//
// The file's reads and writes go straight to the Device (FOPEN_DIRECT_IO:
// no FUSE page cache under the loop device's own), in parallel; fsync and
// close flush the Device; fallocate punches holes (Trim) and zeroes ranges
// (WriteZeroes); SEEK_DATA and SEEK_HOLE follow the Device's extents. The
// file cannot be truncated; Export.Resize follows a Device that changed
// size.
//
// A Device that is a raw image's file may name that file
// (Options.Passthrough): where the kernel has FUSE passthrough, reads and
// writes then go from the kernel to the file directly, as a loop device
// on the file itself would do them, and only the rest (fsync, fallocate,
// lseek, getattr) comes to the server. Such I/O goes on after the server
// is gone (a crash): the kernel holds the image file, and the lock on it
// when it is the Device's own open file, until the file is released.
//
// Deadlock freedom, when the same process serves the file and a loop device
// sits on it: the file is opened with FOPEN_DIRECT_IO (or passed through,
// where only the image file's own page cache is, which the kernel writes
// back without the server), so there is no FUSE page cache whose writeback
// could need the server; requests are served on
// their own goroutines, so a thread blocked on the loop device never stops
// the serving; the serving process should call SetIOFlusher once, so that
// memory reclaim and dirty throttling never make it wait for the loop
// device's own dirty pages; and the export keeps serving after a lazy
// unmount until the kernel has released the file (Export.Done).
package fuseexport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"vdisk/internal/blockdev"
)

const (
	// defaultName is the exported file's name when Options.Name is empty.
	defaultName = "disk"
	// maxIO is the largest READ or WRITE the kernel sends (max_read,
	// max_write), the FUSE maximum.
	maxIO = 1 << 20
	// maxBackground bounds the asynchronous requests (loop direct I/O,
	// readahead) the kernel keeps in flight to the export.
	maxBackground = 128
	// attrTimeout is how long the kernel may cache the file's attributes
	// and the root's entry. The size never changes; the block count may
	// lag by this much.
	attrTimeout = time.Second
	// fsName and subtype show in /proc/mounts as "vdisk fuse.vdisk".
	fsName  = "vdisk"
	subtype = "vdisk"
)

// Options say how to export a device.
type Options struct {
	// Name is the file's name inside the mount; "disk" when empty. It must
	// be a single path element.
	Name string
	// ReadOnly refuses opens for writing and every change to the data.
	// A device whose Info says ReadOnly is exported read-only anyway.
	ReadOnly bool
	// Logger receives debug records of failed requests and the FUSE
	// library's own warnings; nil discards them.
	Logger *slog.Logger
	// Passthrough, when set, is a regular file whose bytes are the
	// device's, byte for byte from offset 0 and exactly as long (a raw
	// image's own file). Where the kernel allows it (FUSE passthrough:
	// Linux 6.9 or later, CAP_SYS_ADMIN, the file on a file system that
	// is not itself stacked) the kernel then reads and writes this file
	// directly for the exported file's reads and writes, which never
	// reach the Device; fsync, fallocate and lseek still do. Elsewhere
	// it is ignored and every request goes to the Device
	// (Export.Passthrough reports which). The caller keeps ownership:
	// the file must stay open until Done is closed. A file opened
	// read-only is used only for a read-only export.
	Passthrough *os.File
}

// Validate checks the options and fills in defaults.
func (o *Options) Validate() error {
	if o.Name == "" {
		o.Name = defaultName
	}
	if o.Name == "." || o.Name == ".." || strings.ContainsAny(o.Name, "/\x00") {
		return fmt.Errorf("fuseexport: file name %q: want a single path element", o.Name)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Export is one mounted FUSE file system with one file: the device.
//
// Close and CloseForce may be called from any goroutine; the first one that
// succeeds ends the export, later calls return ErrClosed.
type Export struct {
	dir  string
	name string
	srv  *fuse.Server
	file *diskFile
	done chan struct{} // closed when the serve loop has returned

	mu        sync.Mutex
	unmounted bool // guarded by mu
}

// Mount mounts a FUSE file system on dir (an existing directory) holding one
// file, opt.Name, that reads and writes dev. It returns when the kernel has
// answered the mount. The caller keeps ownership of dev: it must stay open
// until Done is closed, and Export never closes it.
func Mount(dir string, dev blockdev.Device, opt Options) (*Export, error) {
	if err := opt.Validate(); err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("fuseexport: %w", err)
	}
	if st, err := os.Stat(abs); err != nil {
		return nil, fmt.Errorf("fuseexport: mount point: %w", err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("fuseexport: mount point %s is not a directory", abs)
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return nil, fmt.Errorf("fuseexport: FUSE unavailable: %w", err)
	}
	info := blockdev.InfoOf(dev)
	file := &diskFile{
		dev:      dev,
		readOnly: opt.ReadOnly || info.ReadOnly,
		blksize:  info.PhysicalBlockSize,
		log:      opt.Logger,
		mtime:    time.Now(),
	}
	file.size.Store(dev.Size())
	root := &rootDir{name: opt.Name, file: file}
	timeout := attrTimeout
	fsOpts := &fs.Options{
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		Logger:          slog.NewLogLogger(opt.Logger.Handler(), slog.LevelWarn),
		MountOptions: fuse.MountOptions{
			FsName:            fsName,
			Name:              subtype,
			MaxWrite:          maxIO,
			MaxBackground:     maxBackground,
			DirectMountStrict: true,
			DisableXAttrs:     true,
			// Reads answer with bytes (ReadResultData), never a file
			// to splice from. With splicing on, go-fuse still tries a
			// splice for every READ reply: it takes a pipe from its
			// pool, writes the header into it, finds that the data is
			// no file and throws the pipe's contents away before
			// writing the reply plainly: the serving process made 6.9
			// system calls per 4k READ with it, 3.1 without (perf stat
			// over 10240 random reads through a loop device), and
			// every READ took the pipe pool's one mutex.
			DisableSplice:     true,
			ExtraCapabilities: extraCaps,
			Logger:            slog.NewLogLogger(opt.Logger.Handler(), slog.LevelWarn),
		},
	}
	srv, err := fuse.NewServer(fs.NewNodeFS(root, fsOpts), abs, &fsOpts.MountOptions)
	if err != nil {
		return nil, fmt.Errorf("fuseexport: mount %s: %w", abs, err)
	}
	e := &Export{dir: abs, name: opt.Name, srv: srv, file: file, done: make(chan struct{})}
	go func() { // owned by e: Close and CloseForce wait on e.done
		defer close(e.done)
		srv.Serve()
	}()
	if err := srv.WaitMount(); err != nil {
		_ = syscall.Unmount(abs, syscall.MNT_DETACH)
		<-e.done
		return nil, fmt.Errorf("fuseexport: mount %s: %w", abs, err)
	}
	if opt.Passthrough != nil {
		if err := file.usePassthrough(srv, opt.Passthrough); err != nil {
			opt.Logger.Debug("fuse passthrough unavailable: every request goes through the server", "file", opt.Passthrough.Name(), "err", err)
		}
	}
	return e, nil
}

// Passthrough reports whether opens of the file from now on are passed
// through to Options.Passthrough by the kernel.
func (e *Export) Passthrough() bool { return e.file.backing.Load() != nil }

// Resize makes the file size bytes long, after the device grew (or
// shrank) to that: the kernel drops the attributes it cached, and a stat
// of the file has it read the new size, so that a loop device on the file
// sees it at LOOP_SET_CAPACITY.
func (e *Export) Resize(size int64) error {
	e.file.size.Store(size)
	if errno := e.file.NotifyContent(-1, 0); errno != 0 {
		return fmt.Errorf("fuseexport: tell the kernel of the new size: %w", errno)
	}
	st, err := os.Stat(e.Path())
	if err != nil {
		return fmt.Errorf("fuseexport: %w", err)
	}
	if st.Size() != size {
		return fmt.Errorf("fuseexport: the kernel sees %d bytes after a resize to %d", st.Size(), size)
	}
	return nil
}

// Path returns the exported file's path: the file to attach a loop device
// to.
func (e *Export) Path() string { return filepath.Join(e.dir, e.name) }

// Dir returns the mount point.
func (e *Export) Dir() string { return e.dir }

// Done is closed when the kernel has released the export and the serve
// loop has ended: only then may the caller close the device.
func (e *Export) Done() <-chan struct{} { return e.done }

// Close unmounts the file system and returns when serving has ended. While
// the file is in use (a loop device attached to it) Close leaves the mount
// alone and returns an error wrapping ErrBusy. Close neither flushes nor
// closes the device: a loop device letting go of the file sends no FLUSH,
// so the caller flushes (or closes) the device after Close.
func (e *Export) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.unmounted {
		return ErrClosed
	}
	if err := e.srv.Unmount(); err != nil {
		if errors.Is(err, syscall.EBUSY) {
			return fmt.Errorf("fuseexport: unmount %s: %w", e.dir, ErrBusy)
		}
		return fmt.Errorf("fuseexport: unmount %s: %w", e.dir, err)
	}
	e.unmounted = true
	<-e.done
	return nil
}

// CloseForce detaches the mount from the file system tree (a lazy
// unmount) and returns at once. A loop device attached to the file keeps
// working: the export goes on serving it until the kernel releases the
// file, and then closes Done. The device must stay open until then.
func (e *Export) CloseForce() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.unmounted {
		return ErrClosed
	}
	if err := syscall.Unmount(e.dir, syscall.MNT_DETACH); err != nil {
		return fmt.Errorf("fuseexport: lazy unmount %s: %w", e.dir, err)
	}
	e.unmounted = true
	return nil
}

// rootDir is the mount's root directory: it holds only the device file.
type rootDir struct {
	fs.Inode
	name string
	file *diskFile
}

var _ fs.NodeOnAdder = (*rootDir)(nil)

// OnAdd creates the device file when the file system is mounted.
func (r *rootDir) OnAdd(ctx context.Context) {
	child := r.NewPersistentInode(ctx, r.file, fs.StableAttr{Mode: syscall.S_IFREG, Ino: fileIno})
	r.AddChild(r.name, child, false)
}
