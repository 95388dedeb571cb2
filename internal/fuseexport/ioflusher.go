package fuseexport

import (
	"errors"
	"fmt"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// SetIOFlusher marks every thread of the calling process as part of the
// kernel's I/O path (prctl PR_SET_IO_FLUSHER): memory reclaim in the
// process never waits on I/O, and writeback throttling looks only at the
// process's own writes. A process that serves a FUSE file under a loop
// device needs this: otherwise the kernel may wait, while the server
// allocates memory or writes its image, for dirty pages of that loop
// device, which only the server itself can write. Call it once, early;
// threads created later inherit the mark. It needs CAP_SYS_RESOURCE.
//
// Go can set a thread flag on every thread only in a binary built without
// cgo; with cgo, SetIOFlusher returns an error wrapping
// errors.ErrUnsupported. (The mark is inherited across fork and exec, so a
// parent may instead set it on the thread that starts the server.)
func SetIOFlusher() error {
	_, _, errno := syscall.AllThreadsSyscall6(syscall.SYS_PRCTL, unix.PR_SET_IO_FLUSHER, 1, 0, 0, 0, 0)
	switch errno {
	case 0:
		return nil
	case syscall.ENOTSUP:
		return fmt.Errorf("fuseexport: set PR_SET_IO_FLUSHER on every thread: %w in a cgo binary", errors.ErrUnsupported)
	default:
		return fmt.Errorf("fuseexport: set PR_SET_IO_FLUSHER on every thread: %w", errno)
	}
}

// IsIOFlusher reports whether the thread running the caller has the
// PR_SET_IO_FLUSHER mark.
func IsIOFlusher() (bool, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	v, err := unix.PrctlRetInt(unix.PR_GET_IO_FLUSHER, 0, 0, 0, 0)
	if err != nil {
		return false, fmt.Errorf("fuseexport: get PR_GET_IO_FLUSHER: %w", err)
	}
	return v == 1, nil
}
