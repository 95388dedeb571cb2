package qcow2

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// qemu's image locking (block/file-posix.c): one byte per permission, at
// lockPermBase+bit for a permission a process uses and lockSharedBase+bit
// for one it does not let others have, each held as an OFD read lock.
// Taking the same bytes makes qemu-img, qemu-io and qemu-nbd see an image
// vdisk has open, and vdisk see theirs.
const (
	lockPermBase   = 100
	lockSharedBase = 200

	permRead   = 0 // BLK_PERM_CONSISTENT_READ
	permWrite  = 1 // BLK_PERM_WRITE
	permResize = 3 // BLK_PERM_RESIZE
)

// qemuLock takes qemu's permission bytes on a local file (the File's own
// flock already keeps other vdisk processes out): a writer uses read and
// write and shares neither write nor resize; a reader uses read and does
// not share write. It first checks that no other process unshares what
// we use or uses what we unshare. Other Files (an object store's) have
// their own lease.
func qemuLock(f image.File, readOnly, noLock bool) error {
	lf, ok := f.(interface{ OS() *os.File })
	if noLock || !ok {
		return nil
	}
	use, unshare := []int{permRead}, []int{permWrite}
	if !readOnly {
		use, unshare = []int{permRead, permWrite}, []int{permWrite, permResize}
	}
	fd := int(lf.OS().Fd())
	for _, b := range use {
		if err := lockFree(fd, lockSharedBase+b); err != nil {
			return err
		}
	}
	for _, b := range unshare {
		if err := lockFree(fd, lockPermBase+b); err != nil {
			return err
		}
	}
	var bytes []int
	for _, b := range use {
		bytes = append(bytes, lockPermBase+b)
	}
	for _, b := range unshare {
		bytes = append(bytes, lockSharedBase+b)
	}
	for _, off := range bytes {
		lk := unix.Flock_t{Type: unix.F_RDLCK, Whence: 0, Start: int64(off), Len: 1}
		if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, &lk); err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
				return fmt.Errorf("qcow2: image in use by another process (lock byte %d): %w", off, blockdev.ErrLocked)
			}
			return fmt.Errorf("qcow2: lock byte %d: %w", off, err)
		}
	}
	return nil
}

// lockFree reports ErrLocked when another open file holds byte off.
func lockFree(fd, off int) error {
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: int64(off), Len: 1}
	if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, &lk); err != nil {
		return fmt.Errorf("qcow2: test lock byte %d: %w", off, err)
	}
	if lk.Type != unix.F_UNLCK {
		return fmt.Errorf("qcow2: image in use by another process (qemu lock byte %d): %w", off, blockdev.ErrLocked)
	}
	return nil
}
