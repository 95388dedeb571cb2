package blockdevtest

import (
	"sync"

	"vdisk/internal/blockdev"
)

// Crashable is a memory Device that remembers what a power cut would keep.
// Every write (WriteAt, Trim, WriteZeroes) lands in the current image and
// in a log; Flush (and Close) moves the log into the durable image. Crash
// throws the log away, as a power cut throws away what was never flushed,
// and returns the durable image.
//
// All methods are safe for concurrent use; a mutex serialises them (it is
// for tests). A write that completes before Flush is called is durable once
// Flush returns; one that races with Flush may or may not be.
type Crashable struct {
	size int64

	mu      sync.Mutex
	cur     *blockdev.Mem // what reads see
	durable *blockdev.Mem // what survives a crash
	log     []Write       // writes since the last flush, in order
	flushes int
	crashed bool
}

// A Write is one unflushed write of a Crashable: Data at Off, or, when Data
// is nil, Len zero bytes (a Trim or WriteZeroes).
type Write struct {
	Off, Len int64
	Data     []byte
}

var (
	_ blockdev.Device     = (*Crashable)(nil)
	_ blockdev.Trimmer    = (*Crashable)(nil)
	_ blockdev.ZeroWriter = (*Crashable)(nil)
	_ blockdev.Extenter   = (*Crashable)(nil)
)

// NewCrashable returns an all-zero Crashable of size bytes.
func NewCrashable(size int64) *Crashable {
	return &Crashable{size: size, cur: blockdev.NewMem(size), durable: blockdev.NewMem(size)}
}

// NewCrashableFrom returns a Crashable whose current and durable images
// both hold img (whose length is the size).
func NewCrashableFrom(img []byte) (*Crashable, error) {
	c := NewCrashable(int64(len(img)))
	if _, err := c.cur.WriteAt(img, 0); err != nil {
		return nil, err
	}
	if _, err := c.durable.WriteAt(img, 0); err != nil {
		return nil, err
	}
	return c, nil
}

// Size returns the device's size.
func (c *Crashable) Size() int64 { return c.size }

// ReadAt reads the current image.
func (c *Crashable) ReadAt(p []byte, off int64) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.crashed {
		return 0, blockdev.ErrClosed
	}
	return c.cur.ReadAt(p, off)
}

// WriteAt writes the current image and logs the write.
func (c *Crashable) WriteAt(p []byte, off int64) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.crashed {
		return 0, blockdev.ErrClosed
	}
	n, err := c.cur.WriteAt(p, off)
	if err == nil && n > 0 {
		c.log = append(c.log, Write{Off: off, Len: int64(n), Data: append([]byte(nil), p[:n]...)})
	}
	return n, err
}

// Trim zeroes a range, as a logged write.
func (c *Crashable) Trim(off, n int64) error { return c.WriteZeroes(off, n, true) }

// WriteZeroes zeroes a range, as a logged write.
func (c *Crashable) WriteZeroes(off, n int64, _ bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.crashed {
		return blockdev.ErrClosed
	}
	if err := c.cur.WriteZeroes(off, n, true); err != nil {
		return err
	}
	if n > 0 {
		c.log = append(c.log, Write{Off: off, Len: n})
	}
	return nil
}

// Extents describes the current image.
func (c *Crashable) Extents(off, n int64) ([]blockdev.Extent, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.crashed {
		return nil, blockdev.ErrClosed
	}
	return c.cur.Extents(off, n)
}

// Flush makes every logged write durable.
func (c *Crashable) Flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.crashed {
		return blockdev.ErrClosed
	}
	if err := c.cur.Flush(); err != nil { // ErrClosed after Close
		return err
	}
	c.flushLocked()
	return nil
}

func (c *Crashable) flushLocked() {
	for _, w := range c.log {
		apply(c.durable, w)
	}
	c.log = nil
	c.flushes++
}

// apply replays w on m, whose size it fits: it cannot fail.
func apply(m *blockdev.Mem, w Write) {
	var err error
	if w.Data == nil {
		err = m.WriteZeroes(w.Off, w.Len, true)
	} else {
		_, err = m.WriteAt(w.Data, w.Off)
	}
	if err != nil {
		panic("blockdevtest: replay of a logged write: " + err.Error())
	}
}

// Close flushes, then closes the device. The durable image stays readable
// through Crash.
func (c *Crashable) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.crashed {
		return blockdev.ErrClosed
	}
	if err := c.cur.Close(); err != nil {
		return err
	}
	c.flushLocked()
	return nil
}

// Flushes returns how many times the device was flushed (Close included).
func (c *Crashable) Flushes() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flushes
}

// Pending returns the writes not yet flushed, oldest first.
func (c *Crashable) Pending() []Write {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Write(nil), c.log...)
}

// Crash cuts the power: every write not covered by a Flush is lost, the
// device fails every later call with ErrClosed, and the durable image is
// returned as a new Mem (which the caller owns; reopen the format on it).
func (c *Crashable) Crash() *blockdev.Mem {
	return c.CrashKeeping(func(int, Write) bool { return false })
}

// CrashKeeping cuts the power like Crash, but first lets some unflushed
// writes reach the durable image, in their order: those for which keep
// (given the write's index in Pending and the write) returns true. It
// models a disk that wrote some of its cache, in any order, before power
// went.
func (c *Crashable) CrashKeeping(keep func(i int, w Write) bool) *blockdev.Mem {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := blockdev.NewMem(c.size)
	if c.crashed {
		copyMem(out, c.durable)
		return out
	}
	for i, w := range c.log {
		if keep(i, w) {
			apply(c.durable, w)
		}
	}
	c.log = nil
	c.crashed = true
	c.cur = nil
	copyMem(out, c.durable)
	return out
}

// Durable returns a copy of the durable image: what a crash now would keep.
func (c *Crashable) Durable() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := make([]byte, c.size)
	if _, err := c.durable.ReadAt(b, 0); err != nil {
		panic("blockdevtest: read of the durable image: " + err.Error())
	}
	return b
}

// copyMem copies src into dst, page by page, skipping holes.
func copyMem(dst, src *blockdev.Mem) {
	ext, err := blockdev.Extents(src, 0, src.Size())
	if err != nil {
		panic("blockdevtest: extents of the durable image: " + err.Error())
	}
	for _, e := range ext {
		if e.Flags&blockdev.ExtentZero != 0 {
			continue
		}
		buf := make([]byte, e.Len)
		if _, err := src.ReadAt(buf, e.Off); err != nil {
			panic("blockdevtest: read of the durable image: " + err.Error())
		}
		if _, err := dst.WriteAt(buf, e.Off); err != nil {
			panic("blockdevtest: copy of the durable image: " + err.Error())
		}
	}
}
