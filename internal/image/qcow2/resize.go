package qcow2

import (
	"fmt"

	"vdisk/internal/blockdev"
)

// Resize grows the virtual disk to size bytes, as qemu-img resize does: a
// larger L1 table, when the new size needs one, is written and counted
// first and the header switched to it in one sector write; then the
// header's size. The new range reads as zeroes. Shrinking is refused (it
// would drop the data past the new end), and so is an image with internal
// snapshots, whose sizes qemu keeps in step. It waits for I/O in flight.
func (img *Image) Resize(size int64) error {
	unlock, err := img.exclusive()
	if err != nil {
		return err
	}
	defer unlock()
	switch {
	case size < img.Size():
		return fmt.Errorf("qcow2: shrinking from %d to %d bytes is not supported: %w", img.Size(), size, blockdev.ErrNotSupported)
	case size == img.Size():
		return nil
	case img.h.nbSnapshots > 0:
		return fmt.Errorf("qcow2: cannot resize an image with %d internal snapshots: %w", img.h.nbSnapshots, blockdev.ErrNotSupported)
	case size%512 != 0:
		return fmt.Errorf("qcow2: size %d is not a multiple of 512", size)
	}
	nh := *img.h
	nh.size = uint64(size)
	need := int64(nh.l1Needed())
	if need*8 > maxL1Bytes {
		return fmt.Errorf("qcow2: size %d needs an L1 table above %d bytes; use larger clusters", size, maxL1Bytes)
	}
	if need > int64(len(img.l1)) {
		if err := img.growL1(need); err != nil {
			return err
		}
	}
	if err := img.writeHeaderField(24, uint64(size)); err != nil {
		return err
	}
	img.h.size = uint64(size)
	img.vsize.Store(size)
	return nil
}

// growL1 moves the L1 table to new clusters with room for n entries.
func (img *Image) growL1(n int64) error {
	if err := img.writeMetadata(true); err != nil {
		return err
	}
	l1 := make([]uint64, n)
	copy(l1, img.l1)
	off, err := img.writeL1Copy(l1)
	if err != nil {
		return err
	}
	if err := img.switchTable(36, uint32(n), off, "L1 table"); err != nil {
		return err
	}
	img.freeBytes(int64(img.h.l1Off), int64(len(img.l1))*8)
	img.l1 = l1
	img.h.l1Off, img.h.l1Size = uint64(off), uint32(n)
	return img.applyFrees()
}

// exclusive waits for the I/O in flight and holds off the rest (and the
// metadata) until unlock: for operations that change the image's shape.
func (img *Image) exclusive() (unlock func(), err error) {
	if img.readOnly {
		return nil, blockdev.ErrReadOnly
	}
	if img.closed.Load() {
		return nil, blockdev.ErrClosed
	}
	img.ioMu.Lock()
	img.mu.Lock()
	return func() {
		img.mu.Unlock()
		img.ioMu.Unlock()
	}, nil
}
