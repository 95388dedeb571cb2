package blockdev

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"syscall"
	"testing"
)

func TestErrno(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want syscall.Errno
	}{
		{"nil", nil, 0},
		{"read-only", ErrReadOnly, syscall.EPERM},
		{"wrapped read-only", fmt.Errorf("qcow2: write: %w", ErrReadOnly), syscall.EPERM},
		{"range error", CheckRange(10, 10, 15), syscall.EINVAL},
		{"out of range", ErrOutOfRange, syscall.EINVAL},
		{"not supported", ErrNotSupported, syscall.EOPNOTSUPP},
		{"no space", ErrNoSpace, syscall.ENOSPC},
		{"no space wrapping ENOSPC", mapNoSpace(syscall.ENOSPC), syscall.ENOSPC},
		{"quota wrapped as no space", mapNoSpace(syscall.EDQUOT), syscall.ENOSPC},
		{"closed", ErrClosed, syscall.ESHUTDOWN},
		{"permission", fs.ErrPermission, syscall.EPERM},
		{"EOF", io.EOF, syscall.EIO},
		{"unexpected EOF", fmt.Errorf("read: %w", io.ErrUnexpectedEOF), syscall.EIO},
		{"raw errno", syscall.EROFS, syscall.EROFS},
		{"wrapped errno", fmt.Errorf("write x: %w", syscall.EFBIG), syscall.EFBIG},
		{"errno in a PathError", &fs.PathError{Op: "open", Path: "x", Err: syscall.ENOENT}, syscall.ENOENT},
		{"corrupt", ErrCorrupt, syscall.EIO},
		{"locked", fmt.Errorf("open x: %w", ErrLocked), syscall.EBUSY},
		{"anything else", errors.New("boom"), syscall.EIO},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Errno(tc.err); got != tc.want {
				t.Errorf("Errno(%v) = %v (%d), want %v (%d)", tc.err, got, got, tc.want, tc.want)
			}
		})
	}
}
