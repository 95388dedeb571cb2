package ublk

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"vdisk/internal/blockdev"
)

// Bounds and defaults of Options.
const (
	DefaultQueues  = 1
	MaxQueues      = 16 // the most queues (and locked OS threads) a Disk uses
	DefaultDepth   = 64
	MaxDepth       = maxQueueDepth
	DefaultWorkers = 4
	MaxWorkers     = 64        // goroutines per queue
	DefaultMaxIO   = 512 << 10 // bytes: the largest request, and each tag's buffer
	MaxMaxIO       = 1 << 20   // bytes: with Depth, bounds a queue's buffer memory
	// charDevWait bounds the wait for /dev/ublkcN to appear after ADD_DEV
	// (devtmpfs creates it at once; udev may rename or re-create it).
	charDevWait = 10 * time.Second
)

// Options configure Serve.
type Options struct {
	// Queues is the number of hardware queues, each served by its own
	// io_uring on its own OS thread and its own Workers. Zero means
	// DefaultQueues; at most MaxQueues.
	Queues int
	// Depth is the number of requests each queue may have in flight.
	// Zero means DefaultDepth; at most MaxDepth.
	Depth int
	// Workers is the number of goroutines per queue that run requests on
	// the Device, so that requests of one queue overlap. Zero means
	// DefaultWorkers; at most MaxWorkers.
	Workers int
	// MaxIO is the largest request in bytes, a multiple of the page size.
	// Zero means DefaultMaxIO; at most MaxMaxIO.
	MaxIO int
	// ReadOnly exposes the device read-only even if it is writable.
	ReadOnly bool
	// Recoverable asks for user recovery when the kernel offers it
	// (UBLK_F_USER_RECOVERY with REISSUE): if the server dies, the block
	// device stays, its I/O waits, and Recover attaches a new server that
	// gets the unfinished requests again. Disk.Recoverable tells whether
	// the kernel agreed.
	Recoverable bool
	// Logger receives errors the I/O path cannot return to a caller; nil
	// discards them.
	Logger *slog.Logger
}

// Validate fills in defaults and checks the bounds.
func (o *Options) Validate() error {
	if o.Queues == 0 {
		o.Queues = DefaultQueues
	}
	if o.Depth == 0 {
		o.Depth = DefaultDepth
	}
	if o.MaxIO == 0 {
		o.MaxIO = DefaultMaxIO
	}
	if o.Workers == 0 {
		o.Workers = DefaultWorkers
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case o.Queues < 1 || o.Queues > MaxQueues:
		return fmt.Errorf("ublk: %d queues is outside [1, %d]", o.Queues, MaxQueues)
	case o.Workers < 1 || o.Workers > MaxWorkers:
		return fmt.Errorf("ublk: %d workers per queue is outside [1, %d]", o.Workers, MaxWorkers)
	case o.Depth < 1 || o.Depth > MaxDepth:
		return fmt.Errorf("ublk: queue depth %d is outside [1, %d]", o.Depth, MaxDepth)
	case o.MaxIO < os.Getpagesize() || o.MaxIO > MaxMaxIO || o.MaxIO%os.Getpagesize() != 0:
		return fmt.Errorf("ublk: max I/O size %d is not a multiple of the page size in [%d, %d]", o.MaxIO, os.Getpagesize(), MaxMaxIO)
	}
	return nil
}

// Disk is a Device served to the kernel as /dev/ublkbN.
//
// Its queues run until Close; Close may be called from any goroutine, and
// once: later calls return ErrClosed. The Device must stay open until
// Close returns.
type Disk struct {
	id       uint32
	ctrl     *control
	cdev     *os.File
	stopFD   int
	dev      blockdev.Device
	features uint64
	info     devInfo
	log      *slog.Logger
	workers  int

	wg   sync.WaitGroup // the queue goroutines
	errs []error        // one per queue, written by its goroutine before wg.Done

	mu     sync.Mutex
	closed bool
}

// Serve exposes dev through a new ublk device and returns once the kernel
// has started it, with /dev/ublkbN ready to open. ctx bounds the setup only.
// It uses only the features GET_FEATURES offers; data moves through one
// buffer per tag, which every ublk kernel supports.
func Serve(ctx context.Context, dev blockdev.Device, opt Options) (*Disk, error) {
	if err := opt.Validate(); err != nil {
		return nil, err
	}
	info := blockdev.InfoOf(dev)
	size := dev.Size()
	if size <= 0 || size%int64(info.LogicalBlockSize) != 0 {
		return nil, fmt.Errorf("ublk: device size %d is not a positive multiple of its block size %d", size, info.LogicalBlockSize)
	}
	ctrl, err := openControl()
	if err != nil {
		return nil, err
	}
	d := &Disk{ctrl: ctrl, dev: dev, stopFD: -1, log: opt.Logger, workers: opt.Workers}
	d.features = ctrl.features()
	ctrl.encoded = d.features&featCmdIoctlEncode != 0
	d.info = devInfo{
		nrHWQueues:    uint16(opt.Queues),
		queueDepth:    uint16(opt.Depth),
		maxIOBufBytes: uint32(opt.MaxIO),
		devID:         devIDAny,
		ublksrvPID:    int32(os.Getpid()),
		flags:         d.features & featCmdIoctlEncode,
	}
	if opt.Recoverable && d.features&(featUserRecovery|featRecovReissue) == featUserRecovery|featRecovReissue {
		d.info.flags |= featUserRecovery | featRecovReissue
	}
	if err := ctrl.addDev(&d.info); err != nil {
		ctrl.close()
		return nil, err
	}
	d.id = d.info.devID
	err = d.ctrl.setParams(d.id, d.params(size, info, opt.ReadOnly))
	if err == nil {
		err = d.startQueues(ctx)
	}
	if err == nil {
		err = d.ctrl.startDev(d.id, os.Getpid())
	}
	if err != nil {
		return nil, errors.Join(err, d.teardown(false))
	}
	return d, nil
}

// startQueues opens the character device and starts one goroutine per
// queue; it returns once every queue has fetched all its tags.
func (d *Disk) startQueues(ctx context.Context) error {
	var err error
	if d.cdev, err = openCharDev(ctx, d.id); err != nil {
		return err
	}
	if d.stopFD, err = unix.Eventfd(0, unix.EFD_CLOEXEC); err != nil {
		return fmt.Errorf("ublk: eventfd: %w", err)
	}
	n := int(d.info.nrHWQueues)
	d.errs = make([]error, n)
	ready := make(chan error, n)
	for i := range n {
		q := &queue{
			id: uint16(i), depth: int(d.info.queueDepth), bufSize: int(d.info.maxIOBufBytes),
			cdev: d.cdev, stopFD: d.stopFD, dev: d.dev, log: d.log,
			encoded: d.info.flags&featCmdIoctlEncode != 0, workers: d.workers,
		}
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			d.errs[i] = q.run(ready)
		}()
	}
	var errs []error
	for range n {
		errs = append(errs, <-ready)
	}
	return errors.Join(errs...)
}

// params builds SET_PARAMS's argument from the device's size and facts.
func (d *Disk) params(size int64, info blockdev.Info, readOnly bool) *params {
	p := &params{types: paramTypeBasic}
	p.len = uint32(sizeofParams)
	p.basic = paramBasic{
		attrs:           attrVolatileCache | attrFUA,
		logicalBSShift:  uint8(bits.TrailingZeros32(info.LogicalBlockSize)),
		physicalBSShift: uint8(bits.TrailingZeros32(max(info.PhysicalBlockSize, info.LogicalBlockSize))),
		ioMinShift:      uint8(bits.TrailingZeros32(info.LogicalBlockSize)),
		ioOptShift:      uint8(bits.TrailingZeros32(max(info.PhysicalBlockSize, info.LogicalBlockSize))),
		maxSectors:      d.info.maxIOBufBytes >> sectorShift,
		devSectors:      uint64(size) >> sectorShift,
	}
	if readOnly || info.ReadOnly {
		p.basic.attrs |= attrReadOnly
	}
	if info.Rotational {
		p.basic.attrs |= attrRotational
	}
	_, canTrim := d.dev.(blockdev.Trimmer)
	if !readOnly && !info.ReadOnly {
		// Write-zeroes always works (blockdev.WriteZeroes falls back to
		// writing zeroes); discard only where the device can trim.
		p.types |= paramTypeDiscard
		p.discard = paramDiscard{
			discardGranularity:    max(info.PhysicalBlockSize, info.LogicalBlockSize),
			maxWriteZeroesSectors: d.info.maxIOBufBytes >> sectorShift,
			maxDiscardSegments:    1,
		}
		if canTrim {
			p.discard.maxDiscardSectors = ^uint32(0) >> sectorShift
		}
	}
	return p
}

// openCharDev opens /dev/ublkcN, waiting a bounded time for it to appear.
func openCharDev(ctx context.Context, id uint32) (*os.File, error) {
	path := fmt.Sprintf("/dev/ublkc%d", id)
	ctx, cancel := context.WithTimeout(ctx, charDevWait)
	defer cancel()
	for {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("ublk: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("ublk: %s did not appear: %w", path, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// ID is the device number N of /dev/ublkbN.
func (d *Disk) ID() int { return int(d.id) }

// Path is the block device, /dev/ublkbN.
func (d *Disk) Path() string { return fmt.Sprintf("/dev/ublkb%d", d.id) }

// Features are the UBLK_F_* flags the kernel offered.
func (d *Disk) Features() uint64 { return d.features }

// Recoverable reports whether the device survives its server (see
// Options.Recoverable and Recover).
func (d *Disk) Recoverable() bool { return d.info.flags&featUserRecovery != 0 }

// Close stops the block device (the kernel flushes it and completes every
// request first), stops the queues, deletes the device and flushes the
// Device. It does not close the Device.
func (d *Disk) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	d.closed = true
	return d.teardown(true)
}

// teardown undoes Serve; started says whether the queues ran.
func (d *Disk) teardown(started bool) error {
	var errs []error
	if started {
		errs = append(errs, d.ctrl.stopDev(d.id))
	}
	if d.stopFD >= 0 {
		if _, err := unix.Write(d.stopFD, []byte{1, 0, 0, 0, 0, 0, 0, 0}); err != nil {
			errs = append(errs, fmt.Errorf("ublk: wake the queues: %w", err))
		}
	}
	d.wg.Wait()
	errs = append(errs, d.errs...)
	if d.stopFD >= 0 {
		unix.Close(d.stopFD)
		d.stopFD = -1
	}
	if d.cdev != nil {
		errs = append(errs, d.cdev.Close())
		d.cdev = nil
	}
	errs = append(errs, d.ctrl.delDev(d.id))
	errs = append(errs, d.ctrl.close())
	if err := d.dev.Flush(); err != nil {
		errs = append(errs, fmt.Errorf("ublk: flush the device: %w", err))
	}
	return errors.Join(errs...)
}
