package chunked

import (
	"errors"
	"fmt"
	"time"

	"vdisk/internal/blockdev"
	"vdisk/internal/storage/objstore"
)

// Flush returns when every write, trim and zeroing that completed before
// the call is stored, and, for a format's file, its length: the chunks go
// first and the manifest after them, so a stored length never covers data
// that is not stored. On error the data stays cached and is retried.
func (d *Device) Flush() error {
	asked := time.Now()
	if err := d.flushChunks(); err != nil {
		return err
	}
	return d.storeLength(asked)
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

// storeLength rewrites the manifest when the length changed since it was
// last stored. The lease makes this writer the only one, so the put is
// unconditional; it is confirmed first unless a renewal started after
// asked (the chunk flush's) already did.
func (d *Device) storeLength(asked time.Time) error {
	d.manMu.Lock()
	defer d.manMu.Unlock()
	d.mu.Lock()
	gen, m := d.lengthGen, d.man
	m.Length = d.length
	stored := d.lengthStored
	d.mu.Unlock()
	if gen == stored {
		return nil
	}
	ctx, cancel := d.reqCtx()
	defer cancel()
	if err := d.renewLease(ctx, asked); errors.Is(err, ErrLeaseLost) {
		return fmt.Errorf("chunked: flush: %w", err)
	}
	if _, err := d.store.Put(ctx, d.kp+manifestName, m.encode(), objstore.PutOptions{}); err != nil {
		return fmt.Errorf("chunked: flush: store length in the manifest: %w", unavailable(err))
	}
	d.mu.Lock()
	d.lengthStored = gen
	d.mu.Unlock()
	return nil
}
