package crypt

import (
	"errors"
	"fmt"
	"sync"

	"vdisk/internal/blockdev"
)

// chunkSize bounds the buffer a single read or write encrypts at once; a
// larger request is processed in chunks of this size. It is a multiple of
// every sector size.
const chunkSize = 256 << 10

// ivSector is the unit IVs count in: dm-crypt without iv_large_sectors (the
// LUKS convention) numbers 512-byte sectors whatever the encryption sector
// size.
const ivSector = 512

// Config describes the encrypted payload inside the inner device.
type Config struct {
	// Cipher encrypts the sectors. The Device owns it from New on and wipes
	// it on Close.
	Cipher *Cipher
	// SectorSize is the encryption sector size: a power of two from 512 to
	// 4096 (LUKS uses 512 and 4096); 0 means 512.
	SectorSize int
	// Offset is where the payload starts on the inner device, in bytes. It
	// must be a multiple of 512.
	Offset int64
	// Size is the payload's length in bytes; 0 means up to the end of the
	// inner device. It is rounded down to a multiple of SectorSize.
	Size int64
	// IVOffset is added to the IV sector number (LUKS2's iv_tweak).
	IVOffset uint64
	// AllowDiscards makes the Device a blockdev.Trimmer when the inner
	// device is one. It reveals which ranges are unused; see the package
	// documentation.
	AllowDiscards bool
}

// device is the plaintext view of an encrypted payload on an inner device.
//
// ReadAt and WriteAt may be called from many goroutines at once. Accesses
// are locked per range of encryption sectors: a write that covers part of a
// sector reads, decrypts, merges and re-encrypts it while no other request
// touches that sector, so concurrent writes to the same sector each land
// whole; requests on disjoint sectors run in parallel. Close waits for
// requests in flight, wipes the key and closes the inner device.
type device struct {
	inner    blockdev.Device
	c        *Cipher
	ss       int64 // encryption sector size
	off      int64 // payload offset on inner
	size     int64
	ivOffset uint64
	info     blockdev.Info
	locks    *blockdev.RangeLock
	bufs     sync.Pool // *[]byte of chunkSize

	// closeMu is held shared by every request and exclusively by Close, so
	// that Close never wipes the key under a request.
	closeMu sync.RWMutex
	closed  bool
}

var (
	_ blockdev.Device     = (*device)(nil)
	_ blockdev.ZeroWriter = (*device)(nil)
	_ blockdev.Describer  = (*device)(nil)
	_ blockdev.Trimmer    = discarder{}
)

// New returns the plaintext view of the payload cfg describes on inner. The
// result is a blockdev.ZeroWriter and a blockdev.Describer, and a
// blockdev.Trimmer only when cfg.AllowDiscards is set and inner is one. It
// takes ownership of inner (closed by its Close) and of cfg.Cipher (wiped by
// its Close).
func New(inner blockdev.Device, cfg Config) (blockdev.Device, error) {
	d, err := newDevice(inner, cfg)
	if err != nil {
		return nil, err
	}
	caps := blockdev.Caps{ZeroWriter: d, Describer: d}
	if _, ok := inner.(blockdev.Trimmer); ok && cfg.AllowDiscards {
		caps.Trimmer = discarder{d}
	}
	return blockdev.WithCaps(d, caps), nil
}

func newDevice(inner blockdev.Device, cfg Config) (*device, error) {
	if cfg.Cipher == nil {
		return nil, fmt.Errorf("crypt: no cipher: %w", ErrConfig)
	}
	ss := int64(cfg.SectorSize)
	if ss == 0 {
		ss = 512
	}
	if ss < 512 || ss > 4096 || ss&(ss-1) != 0 {
		return nil, fmt.Errorf("crypt: sector size %d, want 512, 1024, 2048 or 4096: %w", ss, ErrConfig)
	}
	isz := inner.Size()
	if cfg.Offset < 0 || cfg.Offset%ivSector != 0 || cfg.Offset > isz {
		return nil, fmt.Errorf("crypt: payload offset %d on a %d-byte device: %w", cfg.Offset, isz, ErrConfig)
	}
	size := cfg.Size
	if size == 0 {
		size = isz - cfg.Offset
	}
	if size < 0 || size > isz-cfg.Offset {
		return nil, fmt.Errorf("crypt: payload of %d bytes at %d does not fit the %d-byte device: %w", size, cfg.Offset, isz, ErrConfig)
	}
	size -= size % ss
	in := blockdev.InfoOf(inner)
	in.LogicalBlockSize = max(in.LogicalBlockSize, uint32(ss))
	in.PhysicalBlockSize = max(in.PhysicalBlockSize, uint32(ss))
	d := &device{
		inner: inner, c: cfg.Cipher, ss: ss, off: cfg.Offset, size: size,
		ivOffset: cfg.IVOffset, info: in, locks: blockdev.NewRangeLock(),
	}
	d.bufs.New = func() any { b := make([]byte, chunkSize); return &b }
	return d, nil
}

// Size returns the payload size in bytes.
func (d *device) Size() int64 { return d.size }

// Info reports the encryption sector size as the logical block size (a
// smaller write needs read-modify-write) and the inner device's other facts.
func (d *device) Info() blockdev.Info { return d.info }

// begin checks the device is open and [off, off+n) valid, and returns the
// sector-aligned range around it. On success the caller must call
// d.closeMu.RUnlock when done.
func (d *device) begin(off, n int64) (start, end int64, err error) {
	d.closeMu.RLock()
	if d.closed {
		d.closeMu.RUnlock()
		return 0, 0, blockdev.ErrClosed
	}
	if err := blockdev.CheckRange(off, n, d.size); err != nil {
		d.closeMu.RUnlock()
		return 0, 0, err
	}
	return off - off%d.ss, (off + n + d.ss - 1) / d.ss * d.ss, nil
}

// crypt encrypts or decrypts b, the sectors starting at payload offset pos.
// Decrypting leaves an all-zero sector as it is: that is what the inner
// device holds where it was discarded or never written, and it reads as
// zeroes (see the package documentation).
func (d *device) crypt(b []byte, pos int64, encrypt bool) {
	for i := int64(0); i < int64(len(b)); i += d.ss {
		iv := uint64(pos+i)/ivSector + d.ivOffset
		sec := b[i : i+d.ss]
		switch {
		case encrypt:
			d.c.Encrypt(sec, iv)
		case !blockdev.IsZero(sec):
			d.c.Decrypt(sec, iv)
		}
	}
}

// readSectors reads and decrypts the sectors at payload offset pos into b.
func (d *device) readSectors(b []byte, pos int64) error {
	if _, err := d.inner.ReadAt(b, d.off+pos); err != nil {
		return fmt.Errorf("crypt: read %d bytes at payload offset %d: %w", len(b), pos, err)
	}
	d.crypt(b, pos, false)
	return nil
}

// ReadAt reads len(p) plaintext bytes at off.
func (d *device) ReadAt(p []byte, off int64) (int, error) {
	start, end, err := d.begin(off, int64(len(p)))
	if err != nil {
		return 0, err
	}
	defer d.closeMu.RUnlock()
	if len(p) == 0 {
		return 0, nil
	}
	lk := d.locks.Lock(start, end, false)
	defer d.locks.Unlock(lk)
	if start == off && end == off+int64(len(p)) {
		if err := d.readSectors(p, off); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	bp := d.bufs.Get().(*[]byte)
	defer d.bufs.Put(bp)
	for cur := start; cur < end; cur += chunkSize {
		b := (*bp)[:min(chunkSize, end-cur)]
		if err := d.readSectors(b, cur); err != nil {
			return 0, err
		}
		lo, hi := max(cur, off), min(cur+int64(len(b)), off+int64(len(p)))
		copy(p[lo-off:hi-off], b[lo-cur:hi-cur])
	}
	return len(p), nil
}

// WriteAt encrypts and writes p at off. Partial sectors at either end are
// read, decrypted and merged first.
func (d *device) WriteAt(p []byte, off int64) (int, error) {
	start, end, err := d.begin(off, int64(len(p)))
	if err != nil {
		return 0, err
	}
	defer d.closeMu.RUnlock()
	if len(p) == 0 {
		return 0, nil
	}
	lk := d.locks.Lock(start, end, true)
	defer d.locks.Unlock(lk)
	bp := d.bufs.Get().(*[]byte)
	defer d.bufs.Put(bp)
	pend := off + int64(len(p))
	for cur := start; cur < end; cur += chunkSize {
		b := (*bp)[:min(chunkSize, end-cur)]
		cend := cur + int64(len(b))
		if cur < off { // partial first sector
			if err := d.readSectors(b[:d.ss], cur); err != nil {
				return 0, err
			}
		}
		if cend > pend && !(cur < off && cend-d.ss == cur) { // partial last sector, not read above
			if err := d.readSectors(b[len(b)-int(d.ss):], cend-d.ss); err != nil {
				return int(max(cur, off) - off), err
			}
		}
		lo, hi := max(cur, off), min(cend, pend)
		copy(b[lo-cur:hi-cur], p[lo-off:hi-off])
		d.crypt(b, cur, true)
		if _, err := d.inner.WriteAt(b, d.off+cur); err != nil {
			return int(max(cur, off) - off), fmt.Errorf("crypt: write %d bytes at payload offset %d: %w", len(b), cur, err)
		}
	}
	return len(p), nil
}

// WriteZeroes makes [off, off+n) read as zeroes by encrypting and writing
// zeroes. mayTrim is ignored and the storage stays allocated: a discard
// passed down would show whoever holds the storage which ranges are empty,
// which only Config.AllowDiscards permits (and then Trim does it).
func (d *device) WriteZeroes(off, n int64, _ bool) error {
	if _, _, err := d.begin(off, n); err != nil {
		return err
	}
	d.closeMu.RUnlock() // WriteAt takes it again for each chunk
	return blockdev.WriteZeroesByWriting(d, off, n)
}

// Flush flushes the inner device.
func (d *device) Flush() error {
	d.closeMu.RLock()
	defer d.closeMu.RUnlock()
	if d.closed {
		return blockdev.ErrClosed
	}
	return d.inner.Flush()
}

// Close waits for requests in flight, wipes the key and closes the inner
// device (which flushes it).
func (d *device) Close() error {
	d.closeMu.Lock()
	defer d.closeMu.Unlock()
	if d.closed {
		return blockdev.ErrClosed
	}
	d.closed = true
	d.c.Wipe()
	if err := d.inner.Close(); err != nil && !errors.Is(err, blockdev.ErrClosed) {
		return fmt.Errorf("crypt: close inner device: %w", err)
	}
	return nil
}

// discarder is the Trimmer of a device with Config.AllowDiscards.
type discarder struct{ *device }

// Trim discards the whole encryption sectors inside [off, off+n) on the
// inner device, after which they read as zeroes (an all-zero inner sector
// decrypts to zeroes); partial sectors at either end are zeroed by writing
// encrypted zeroes.
func (d discarder) Trim(off, n int64) error {
	if _, _, err := d.begin(off, n); err != nil {
		return err
	}
	d.closeMu.RUnlock() // the writes below take it again
	start, end := (off+d.ss-1)/d.ss*d.ss, (off+n)/d.ss*d.ss
	if start >= end {
		return blockdev.WriteZeroesByWriting(d.device, off, n)
	}
	if start > off {
		if err := blockdev.WriteZeroesByWriting(d.device, off, start-off); err != nil {
			return err
		}
	}
	if off+n > end {
		if err := blockdev.WriteZeroesByWriting(d.device, end, off+n-end); err != nil {
			return err
		}
	}
	if _, _, err := d.begin(start, end-start); err != nil {
		return err
	}
	defer d.closeMu.RUnlock()
	lk := d.locks.Lock(start, end, true)
	defer d.locks.Unlock(lk)
	if err := d.inner.(blockdev.Trimmer).Trim(d.off+start, end-start); err != nil {
		return fmt.Errorf("crypt: discard [%d, +%d): %w", start, end-start, err)
	}
	return nil
}
