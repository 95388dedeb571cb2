package fuseexport

import (
	"errors"
	"fmt"
	"os"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// backingHandle is the handle of an open passed through to a backing file:
// go-fuse registers the file with the kernel (FUSE_DEV_IOC_BACKING_OPEN)
// at the inode's first such open and answers the open with its backing
// id; the kernel then reads and writes the file itself.
type backingHandle struct {
	file *os.File
}

var _ fs.FilePassthroughFder = (*backingHandle)(nil)

// PassthroughFd returns the backing file's descriptor; the kernel takes
// its own reference to the file when it registers it.
func (h *backingHandle) PassthroughFd() (int, bool) { return int(h.file.Fd()), true }

// usePassthrough checks that b can stand in for the device (a regular
// file of the device's size, writable unless the export is read-only) and
// that the kernel takes it as a backing file, then has every later open
// passed through to it. It registers b once and unregisters it at once: a
// refusal (no passthrough in the kernel or in the connection, no
// CAP_SYS_ADMIN, b on a stacked file system) shows here, not at an open
// that then could no longer be passed through.
func (f *diskFile) usePassthrough(srv *fuse.Server, b *os.File) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(b.Fd()), &st); err != nil {
		return fmt.Errorf("stat: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return errors.New("not a regular file")
	}
	if size := f.size.Load(); st.Size != size {
		return fmt.Errorf("the file has %d bytes, the device %d", st.Size, size)
	}
	fl, err := unix.FcntlInt(b.Fd(), unix.F_GETFL, 0)
	if err != nil {
		return fmt.Errorf("get file status flags: %w", err)
	}
	if !f.readOnly && fl&unix.O_ACCMODE == unix.O_RDONLY {
		return errors.New("the file is open read-only and the export is writable")
	}
	id, errno := srv.RegisterBackingFd(&fuse.BackingMap{Fd: int32(b.Fd())})
	if errno != 0 {
		return fmt.Errorf("register the backing file: %w", errno)
	}
	if errno := srv.UnregisterBackingFd(id); errno != 0 {
		return fmt.Errorf("unregister the backing file: %w", errno)
	}
	f.backing.Store(b)
	return nil
}
