package vdi

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"vdisk/internal/blockdev"
)

// check refuses calls after Close and ranges outside the disk.
func (img *Image) check(off, n int64) error {
	img.mu.Lock()
	closed := img.closed
	img.mu.Unlock()
	if closed {
		return blockdev.ErrClosed
	}
	return blockdev.CheckRange(off, n, img.size)
}

// fileOffset returns where guest offset off lives in the file, or -1 when
// its block reads as zeroes. Called with mu held.
func (img *Image) fileOffset(off int64) int64 {
	e := img.bmap[off/img.bs]
	if e == blockFree || e == blockZero {
		return -1
	}
	return img.h.dataOff + int64(e)*img.bs + off%img.bs
}

// ReadAt reads len(p) bytes at off.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	if err := img.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		n := min(int64(len(p)-done), img.bs-pos%img.bs)
		img.mu.Lock()
		fo := img.fileOffset(pos)
		img.mu.Unlock()
		b := p[done : done+int(n)]
		if fo < 0 {
			clear(b)
		} else if _, err := img.f.ReadAt(b, fo); err != nil {
			return done, fmt.Errorf("vdi: read data at %#x: %w", fo, err)
		}
		done += int(n)
	}
	return done, nil
}

// WriteAt writes len(p) bytes at off, allocating blocks as needed.
func (img *Image) WriteAt(p []byte, off int64) (int, error) {
	if err := img.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	if img.readOnly {
		return 0, blockdev.ErrReadOnly
	}
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		n := min(int64(len(p)-done), img.bs-pos%img.bs)
		img.mu.Lock()
		fo := img.fileOffset(pos)
		if fo < 0 {
			if err := img.allocate(pos / img.bs); err != nil {
				img.mu.Unlock()
				return done, err
			}
			fo = img.fileOffset(pos)
		}
		img.mu.Unlock()
		if err := img.pwrite(p[done:done+int(n)], fo); err != nil {
			return done, err
		}
		done += int(n)
	}
	return done, nil
}

// pwrite writes b at file offset off.
func (img *Image) pwrite(b []byte, off int64) error {
	if _, err := img.f.WriteAt(b, off); err != nil {
		if errors.Is(err, unix.ENOSPC) {
			return fmt.Errorf("vdi: write data at %#x: %w", off, blockdev.ErrNoSpace)
		}
		return fmt.Errorf("vdi: write data at %#x: %w", off, err)
	}
	return nil
}

// allocate gives guest block blk the next block of the file, zeroed (the
// file is extended sparse; space left there by a crash is cleared). Its
// block map entry reaches the file at the next Flush. Called with mu held.
func (img *Image) allocate(blk int64) error {
	if img.next >= img.h.blocks {
		return corruptf("no free block left for block %d: %d of %d in use", blk, img.next, img.h.blocks)
	}
	start := img.h.dataOff + img.next*img.bs
	end := start + img.bs
	if img.fileSize > start {
		if err := img.f.Truncate(start); err != nil {
			return fmt.Errorf("vdi: allocate block %d: %w", blk, err)
		}
	}
	if err := img.f.Truncate(end); err != nil {
		return fmt.Errorf("vdi: allocate block %d: %w", blk, err)
	}
	img.fileSize = end
	img.bmap[blk] = uint32(img.next)
	img.next++
	img.dirty[blk*4/sectorSize] = true
	img.hdrDirty = true
	return nil
}

// Flush makes every completed write durable: the data first, then the
// block map entries and the header that reach it.
func (img *Image) Flush() error {
	img.mu.Lock()
	defer img.mu.Unlock()
	if img.closed {
		return blockdev.ErrClosed
	}
	if img.readOnly {
		return nil
	}
	if err := img.sync(); err != nil {
		return err
	}
	if len(img.dirty) == 0 && !img.hdrDirty {
		return nil
	}
	for sec := range img.dirty {
		first := sec * sectorSize / 4
		last := min(first+sectorSize/4, int64(len(img.bmap)))
		buf := make([]byte, 4*(last-first))
		for i := first; i < last; i++ {
			binary.LittleEndian.PutUint32(buf[4*(i-first):], img.bmap[i])
		}
		if _, err := img.f.WriteAt(buf, img.h.bmapOff+sec*sectorSize); err != nil {
			return fmt.Errorf("vdi: write block map: %w", err)
		}
		delete(img.dirty, sec)
	}
	if img.hdrDirty {
		var b [4]byte
		binary.LittleEndian.PutUint32(b[:], uint32(img.next))
		if _, err := img.f.WriteAt(b[:], offAllocated); err != nil {
			return fmt.Errorf("vdi: write header: %w", err)
		}
		img.h.allocated = img.next
		img.hdrDirty = false
	}
	return img.sync()
}

// sync makes every write to the file durable.
func (img *Image) sync() error {
	if err := unix.Fdatasync(int(img.f.Fd())); err != nil {
		return fmt.Errorf("vdi: sync: %w", err)
	}
	return nil
}
