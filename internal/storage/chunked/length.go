package chunked

import (
	"fmt"

	"vdisk/internal/blockdev"
)

// Flush returns when every write, trim and zeroing that completed before
// the call is stored and committed, and, for a format's file, its length:
// the chunks go first and the manifest after them (one conditional PUT,
// which fails for a writer that lost the image: fence.go), so a stored
// length never covers data that is not stored. On error the data stays
// cached and is retried.
func (d *Device) Flush() error {
	if err := d.flushChunks(); err != nil {
		return err
	}
	d.mu.Lock()
	ro := d.opts.ReadOnly
	d.mu.Unlock()
	if ro {
		return nil
	}
	ctx, cancel := d.reqCtx()
	defer cancel()
	if err := d.commit(ctx); err != nil {
		return fmt.Errorf("chunked: flush: %w", err)
	}
	return nil
}

// Length returns the length of the format's file the chunks hold
// (Manifest.Length): zero for a raw image.
func (d *Device) Length() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.length
}

// SetLength changes the length of the format's file; Flush stores it. A
// length above the image's capacity (Size) fails with blockdev.ErrNoSpace;
// a raw image has no length to set.
func (d *Device) SetLength(n int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.closed:
		return blockdev.ErrClosed
	case d.opts.ReadOnly:
		return blockdev.ErrReadOnly
	case d.man.ImageFormat == "":
		return fmt.Errorf("chunked: a raw image has no file length: %w", blockdev.ErrNotSupported)
	case n < 0:
		return fmt.Errorf("chunked: negative length %d: %w", n, blockdev.ErrOutOfRange)
	case n > d.man.Size:
		return fmt.Errorf("chunked: length %d exceeds the image's capacity of %d bytes: %w", n, d.man.Size, blockdev.ErrNoSpace)
	}
	if err := d.writableLocked(); err != nil {
		return err
	}
	if n != d.length {
		d.length = n
		d.lengthGen++
	}
	return nil
}
