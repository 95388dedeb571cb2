package blockdev

import (
	"errors"
	"io"
	"io/fs"
	"syscall"
)

// Errno maps an error returned by a Device to the errno value an export
// sends to its client (NBD error field, FUSE reply). nil maps to 0. An error
// that wraps a syscall.Errno keeps it; the package's sentinels map to their
// natural values; anything else is EIO.
func Errno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	switch {
	case errors.Is(err, ErrReadOnly):
		return syscall.EPERM
	case errors.Is(err, ErrOutOfRange):
		return syscall.EINVAL
	case errors.Is(err, ErrNotSupported):
		return syscall.EOPNOTSUPP
	case errors.Is(err, ErrNoSpace):
		return syscall.ENOSPC
	case errors.Is(err, ErrClosed):
		return syscall.ESHUTDOWN
	case errors.Is(err, ErrLocked):
		return syscall.EBUSY
	case errors.Is(err, fs.ErrPermission):
		return syscall.EPERM
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return syscall.EIO
	}
	var en syscall.Errno
	if errors.As(err, &en) {
		return en
	}
	return syscall.EIO
}
