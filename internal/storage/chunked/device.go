// Package chunked is a block store over an object store: a Device whose
// bytes live in fixed-size chunk objects <prefix>/<chunk number as 16 hex
// digits>-<epoch>-<seq>, described by <prefix>/manifest.json, with one
// writer at a time enforced by a lease object <prefix>/lease.json and a
// writer that lost the lease fenced by the manifest's epoch (fence.go).
//
// A chunk that was never written, or was trimmed or written all zeros, has
// no object and reads as zeros. Writes land in a bounded write-back cache
// in memory (Options.MaxDirty) and are uploaded by a bounded set of
// workers (Options.Parallel), one PUT at a time per chunk; Flush returns
// when every write before it is stored. Reads fetch only the byte ranges
// they need, with read-ahead for sequential access. If the store stays
// unreachable beyond its retry bound, uploads fail, the Device is degraded
// (Degraded), writes and Flush fail with an I/O error and every write not
// yet stored stays in memory for the next attempt.
//
// Wiring an s3:// image (what vdisk create/open/serve/info/convert do):
//
//	cfg, prefix, err := s3.FromURL("s3://bucket/disks/a", endpointFlag)
//	st, err := s3.New(ctx, cfg)                      // no request yet
//	_, err = chunked.Create(ctx, st, prefix, size, chunked.CreateOptions{}) // ErrExists if present
//	m, err := chunked.Stat(ctx, st, prefix)          // for info: size, chunk size, created
//	d, err := chunked.Open(ctx, st, prefix, chunked.Options{LeaseHolder: "host:pid"})
//	// a *LeaseError (errors.Is ErrLeaseHeld, blockdev.ErrLocked) names the
//	// holder; retry with ForceTakeover once it has expired. ErrNoFencing:
//	// the store ignores If-Match (Options.UnsafeNoFencing overrides).
//	defer d.Close()
//
// The daemon reports d.Degraded() (nil when healthy) and d.Stats(); every
// store failure reaching a caller wraps ErrUnavailable, which
// blockdev.Errno maps to EIO. A writer that lost the image to another
// (ErrLeaseLost, also in Degraded) stores nothing more: see fence.go.
package chunked

import (
	"container/list"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/bits"
	"os"
	"sync"
	"time"

	"vdisk/internal/blockdev"
	"vdisk/internal/storage/objstore"
)

// Defaults for Options.
const (
	// DefaultMaxDirty caps the memory of chunks not yet stored.
	DefaultMaxDirty = 64 << 20
	// DefaultCacheSize caps the memory of clean cached data.
	DefaultCacheSize = 64 << 20
	// DefaultParallel bounds uploads (and prefetches) in flight.
	DefaultParallel = 8
	// DefaultReadAhead is the largest read-ahead for sequential reads:
	// chunks within it are fetched in the background, several at a time.
	DefaultReadAhead = 16 << 20
	// DefaultWriteBackDelay is how long a dirty chunk waits for more writes
	// before it is uploaded without a Flush.
	DefaultWriteBackDelay = time.Second
	// DefaultLeaseTTL is how long a lease lasts without renewal; it is
	// renewed every third of it.
	DefaultLeaseTTL = 30 * time.Second
	// DefaultRequestTimeout bounds one store request with its retries.
	DefaultRequestTimeout = 2 * time.Minute
	// poolBytes bounds the free chunk buffers kept for reuse: a
	// sync.Pool keeps all that were freed since the last GC, which
	// at a GiB/s of reads was most of the process's memory.
	poolBytes = 32 << 20
	// minReadAhead is the first read-ahead of a sequential run.
	minReadAhead = 128 << 10
	// zeroEntryCost is what a pending delete counts against MaxDirty.
	zeroEntryCost = 4 << 10
	// minLeaseTTL bounds LeaseTTL from below.
	minLeaseTTL = time.Second
	// retryTick is the longest wait before failed uploads are retried in
	// the background.
	retryTick = 500 * time.Millisecond
	// minTick bounds how often the write-back goroutine wakes.
	minTick = 10 * time.Millisecond
)

// Options tune an open Device. The zero value is valid.
type Options struct {
	// ReadOnly opens without a lease; writes fail with
	// blockdev.ErrReadOnly.
	ReadOnly bool
	// MaxDirty caps the bytes of written data not yet stored; writers
	// block while it is full. 0 means DefaultMaxDirty; at least one chunk.
	MaxDirty int64
	// CacheSize caps clean cached data (chunks, read windows and pages);
	// 0 means DefaultCacheSize.
	CacheSize int64
	// Parallel bounds uploads in flight; 0 means DefaultParallel.
	Parallel int
	// ReadAhead is the largest read-ahead; 0 means DefaultReadAhead, < 0
	// turns it off.
	ReadAhead int64
	// CacheDir, when set, keeps clean chunks, and the pages random reads
	// fetched, in files under this directory (a subdirectory per image,
	// so images may share it), so a reopened image reads them locally. Entries are checked against the
	// chunk objects' ETags at open. Dirty data is never kept there: a
	// write is durable only once Flush stored it in the object store.
	CacheDir string
	// CacheDirSize caps the bytes of the image's cache directory; 0 means
	// DefaultCacheDirSize.
	CacheDirSize int64
	// WriteBackDelay; 0 means DefaultWriteBackDelay.
	WriteBackDelay time.Duration
	// LeaseHolder names this writer in the lease (shown to a refused
	// second writer); empty means "hostname:pid".
	LeaseHolder string
	// LeaseTTL; 0 means DefaultLeaseTTL.
	LeaseTTL time.Duration
	// ForceTakeover takes a lease whose holder let it expire: one whose
	// object has not changed for the holder's TTL, by the store's clock
	// and then by watching its ETag here for the rest. The holder, if
	// alive after all, is fenced: nothing it stores counts any more.
	ForceTakeover bool
	// RequestTimeout; 0 means DefaultRequestTimeout.
	RequestTimeout time.Duration
	// Logger receives warnings (failed uploads, lease trouble); nil
	// discards.
	Logger *slog.Logger
	// UnsafeNoFencing lets a writer open an image on a store that ignores
	// conditional PUTs (If-Match), where a writer that lost its lease
	// cannot be fenced and may overwrite its successor's data. Without
	// it, such an Open fails with ErrNoFencing.
	UnsafeNoFencing bool
	// ClockOffset shifts this writer's wall clock, which only the lease's
	// informational timestamps use (tests show that writers whose clocks
	// disagree by more than a lease still exclude each other).
	ClockOffset time.Duration

	// now is the wall clock: time.Now shifted by ClockOffset.
	now func() time.Time
	// zombie makes a test writer behave as a frozen one thawed: no lease
	// renewals and no local expiry check, so its uploads reach the store.
	zombie bool
}

func (o *Options) validate(chunkSize int64) error {
	if o.MaxDirty < 0 || o.CacheSize < 0 || o.Parallel < 0 || o.WriteBackDelay < 0 || o.LeaseTTL < 0 || o.RequestTimeout < 0 {
		return fmt.Errorf("chunked: negative option in %+v: %w", *o, ErrBadOptions)
	}
	if o.MaxDirty == 0 {
		o.MaxDirty = DefaultMaxDirty
	}
	o.MaxDirty = max(o.MaxDirty, chunkSize)
	if o.CacheSize == 0 {
		o.CacheSize = DefaultCacheSize
	}
	if o.CacheDirSize < 0 {
		return fmt.Errorf("chunked: negative CacheDirSize %d: %w", o.CacheDirSize, ErrBadOptions)
	}
	if o.CacheDirSize == 0 {
		o.CacheDirSize = DefaultCacheDirSize
	}
	if o.Parallel == 0 {
		o.Parallel = DefaultParallel
	}
	if o.ReadAhead == 0 {
		o.ReadAhead = DefaultReadAhead
	}
	if o.WriteBackDelay == 0 {
		o.WriteBackDelay = DefaultWriteBackDelay
	}
	if o.LeaseTTL == 0 {
		o.LeaseTTL = DefaultLeaseTTL
	}
	if o.LeaseTTL < minLeaseTTL {
		return fmt.Errorf("chunked: lease TTL %v below %v: %w", o.LeaseTTL, minLeaseTTL, ErrBadOptions)
	}
	if o.RequestTimeout == 0 {
		o.RequestTimeout = DefaultRequestTimeout
	}
	if o.LeaseHolder == "" {
		host, _ := os.Hostname()
		o.LeaseHolder = fmt.Sprintf("%s:%d", host, os.Getpid())
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.now == nil {
		off := o.ClockOffset
		o.now = func() time.Time { return time.Now().Add(off) }
	}
	return nil
}

// Device is a blockdev.Device stored in chunks in an object store. All
// methods are safe for concurrent use. One mutex (mu) guards the cache's
// metadata and the copies in and out of cached chunks; store requests run
// without it. The Device owns its goroutines (upload workers, the
// write-back ticker, the lease renewer) and Close waits for them.
type Device struct {
	store     objstore.Store
	kp        string // key prefix: "" or "prefix/"
	man       Manifest
	chunkSize int64
	nchunks   int64
	opts      Options
	log       *slog.Logger

	ctx    context.Context // lifetime, cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
	pool   chan []byte // free chunk buffers (bufPool)
	sem    chan struct{}
	// renewMu serialises lease renewals.
	renewMu sync.Mutex

	mu   sync.Mutex
	cond *sync.Cond // broadcast on every state change writers, Flush and workers wait for
	// chunks holds every cached or dirty chunk.
	chunks map[int64]*chunk
	// dirty holds the chunks that are dirty or uploading.
	dirty map[int64]*chunk
	// exists has a bit per chunk object present in the store.
	exists []uint64
	// etags holds the ETag of each stored chunk object when disk is set.
	etags      map[int64]string
	disk       *diskCache // nil without Options.CacheDir
	dirtyBytes int64
	cleanBytes int64
	lru        list.List // clean chunks with data and pages, most recently used first
	pg         pageState
	queue      []*chunk // chunks for the upload workers
	failSeq    uint64   // counts failed uploads
	degraded   error    // last upload failure; nil when the last upload worked
	fenced     error    // ErrLeaseLost once the lease is gone
	lease      *lease   // nil when read-only
	// renewals and renewalFailures count lease renewals (Stats).
	renewals, renewalFailures int64
	closed                    bool
	seqEnd                    int64 // end of the last read, for the read-ahead detector
	raSize                    int64 // current read-ahead
	// length is the format file's length (Manifest.Length); lengthGen
	// counts its changes and lengthStored is the lengthGen the stored
	// manifest has.
	length       int64
	lengthGen    uint64
	lengthStored uint64
	// manMu serialises manifest writes.
	manMu sync.Mutex

	// Fencing (fence.go). mf is the manifest as last stored (its
	// Committed the committed watermark) and manETag its ETag; seq is
	// the last upload's sequence number in epoch mf.Epoch; unsettled
	// maps the seq of every upload not known to be stored (running, or
	// failed and not superseded) to its chunk; vers holds the version
	// of each chunk's object (data or tombstone) except version 1 ones;
	// garbage the objects to delete once committed.
	mf         manifestFile
	manETag    string
	epoch      uint64
	seq        uint64
	unsettled  map[uint64]int64
	vers       map[int64]ver
	garbage    []garbageKey
	collecting bool
	pruneSeals bool
	liveAtOpen map[uint64]bool
}

var (
	_ blockdev.Device     = (*Device)(nil)
	_ blockdev.Trimmer    = (*Device)(nil)
	_ blockdev.ZeroWriter = (*Device)(nil)
	_ blockdev.Extenter   = (*Device)(nil)
	_ blockdev.Describer  = (*Device)(nil)
)

// Open opens the image under prefix. Unless opts.ReadOnly, it takes the
// image's lease first: a second writer gets a *LeaseError naming the
// holder. It lists the chunk objects once to know which exist.
func Open(ctx context.Context, store objstore.Store, prefix string, opts Options) (*Device, error) {
	kp := keyPrefix(prefix)
	mf, etag, err := readManifest(ctx, store, kp, prefix)
	if err != nil {
		return nil, err
	}
	m := mf.Manifest
	if err := opts.validate(m.ChunkSize); err != nil {
		return nil, err
	}
	d := &Device{
		store: store, kp: kp, man: m, chunkSize: m.ChunkSize,
		nchunks: (m.Size + m.ChunkSize - 1) / m.ChunkSize,
		opts:    opts, log: opts.Logger, length: m.Length,
		chunks: make(map[int64]*chunk), dirty: make(map[int64]*chunk),
		sem: make(chan struct{}, opts.Parallel),
		mf:  mf, manETag: etag, vers: make(map[int64]ver), unsettled: make(map[uint64]int64),
	}
	d.cond = sync.NewCond(&d.mu)
	if opts.CacheDir != "" {
		d.etags = make(map[int64]string)
	}
	d.exists = make([]uint64, (d.nchunks+63)/64)
	d.pool = make(chan []byte, max(2, poolBytes/d.chunkSize))
	if !opts.ReadOnly {
		if err := probeFencing(ctx, store, kp, opts.UnsafeNoFencing); err != nil {
			return nil, fmt.Errorf("chunked: open %s: %w", prefix, err)
		}
		l, err := acquireLease(ctx, store, kp+leaseName, opts.LeaseHolder, opts.LeaseTTL, opts.ForceTakeover, opts.now)
		if err != nil {
			return nil, fmt.Errorf("chunked: open %s: %w", prefix, err)
		}
		d.lease = l
		// Fence every earlier writer before looking at the chunks: what
		// they commit from now on is refused.
		d.mf, d.manETag, err = takeEpoch(ctx, store, kp, prefix)
		if err != nil {
			d.releaseLease(ctx)
			return nil, err
		}
	}
	d.epoch = d.mf.Epoch
	vw, err := scan(ctx, store, kp, d.mf, -1)
	if err != nil {
		if d.lease != nil {
			d.releaseLease(ctx)
		}
		return nil, fmt.Errorf("chunked: open %s: list chunks: %w", prefix, unavailable(err))
	}
	for idx, o := range vw.objs {
		d.setExists(idx, o.size > 0)
		if o.v.epoch != 0 {
			d.vers[idx] = o.v
		}
		if opts.CacheDir != "" && o.size > 0 {
			d.etags[idx] = o.etag
		}
	}
	if !opts.ReadOnly {
		for _, k := range vw.garbage {
			d.garbage = append(d.garbage, garbageKey{key: k})
		}
		d.liveAtOpen = vw.live
		d.pruneSeals = len(d.mf.Sealed) > 0
	}
	if opts.CacheDir != "" {
		d.disk, err = openDiskCache(imageCacheDir(opts.CacheDir, kp, m), opts.CacheDirSize, d.etags, d.log)
		if err != nil {
			if d.lease != nil {
				d.releaseLease(ctx)
			}
			return nil, err
		}
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	for range opts.Parallel {
		d.wg.Go(d.uploader)
	}
	if !opts.ReadOnly {
		d.wg.Go(d.writeBackLoop)
		d.wg.Go(d.leaseLoop)
	}
	return d, nil
}

// Manifest returns the image's manifest, with the current Length.
func (d *Device) Manifest() Manifest {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := d.man
	m.Length = d.length
	return m
}

// Size returns the image's size.
func (d *Device) Size() int64 { return d.man.Size }

// Info implements blockdev.Describer.
func (d *Device) Info() blockdev.Info {
	return blockdev.Info{LogicalBlockSize: 512, PhysicalBlockSize: 4096, ReadOnly: d.opts.ReadOnly}
}

// Degraded returns why the Device cannot store writes right now: the last
// failed upload's error, or ErrLeaseLost; nil when healthy. A degraded
// Device keeps retrying in the background and recovers by itself when the
// store answers again (except after ErrLeaseLost).
func (d *Device) Degraded() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fenced != nil {
		return d.fenced
	}
	return d.degraded
}

// Stats are a snapshot of a Device's cache.
type Stats struct {
	// DirtyBytes is the memory of chunks not yet stored (at most
	// Options.MaxDirty); DirtyChunks counts them.
	DirtyBytes  int64
	DirtyChunks int
	// CachedBytes is the memory of clean cached data.
	CachedBytes int64
	// StoredChunks counts the chunk objects in the store.
	StoredChunks int64
	// LeaseRenewals and LeaseRenewalFailures count this writer's lease
	// renewals that succeeded and failed; LeaseValidUntil is when its
	// lease runs out unless renewed (zero for a reader).
	LeaseRenewals, LeaseRenewalFailures int64
	LeaseValidUntil                     time.Time
}

// Stats returns a snapshot of the cache's state.
func (d *Device) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	var stored int64
	for _, w := range d.exists {
		stored += int64(bits.OnesCount64(w))
	}
	st := Stats{DirtyBytes: d.dirtyBytes, DirtyChunks: len(d.dirty), CachedBytes: d.cleanBytes, StoredChunks: stored,
		LeaseRenewals: d.renewals, LeaseRenewalFailures: d.renewalFailures}
	if d.lease != nil {
		st.LeaseValidUntil = d.lease.validUntil
	}
	return st
}

// chunkLen is the length of chunk idx (the last one may be short).
func (d *Device) chunkLen(idx int64) int64 {
	return min(d.chunkSize, d.man.Size-idx*d.chunkSize)
}

func (d *Device) hasObject(idx int64) bool { return d.exists[idx/64]&(1<<(idx%64)) != 0 }

func (d *Device) setExists(idx int64, v bool) {
	if v {
		d.exists[idx/64] |= 1 << (idx % 64)
	} else {
		d.exists[idx/64] &^= 1 << (idx % 64)
	}
}

// reqCtx is the context of one store request.
func (d *Device) reqCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(d.ctx, d.opts.RequestTimeout)
}

// uploadCtx is the context of one chunk upload: besides RequestTimeout,
// it ends a sixth of the TTL before the lease does unless renewed (the
// lease is renewed every third, so an upload has at least half a TTL), so
// an upload never runs on past the lease (the manifest's fence, not this,
// is what keeps a stale upload out of the image).
func (d *Device) uploadCtx() (context.Context, context.CancelFunc) {
	ctx, cancel := d.reqCtx()
	d.mu.Lock()
	l := d.lease
	var until time.Time
	if l != nil && !d.opts.zombie {
		until = l.validUntil.Add(-l.ttl / 6)
	}
	d.mu.Unlock()
	if until.IsZero() {
		return ctx, cancel
	}
	dctx, dcancel := context.WithDeadline(ctx, until)
	return dctx, func() { dcancel(); cancel() }
}

// Close flushes, stops the Device's goroutines and releases the lease. It
// returns the flush's error, if any, after releasing everything.
func (d *Device) Close() error {
	ferr := d.Flush()
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return blockdev.ErrClosed
	}
	d.closed = true
	d.cond.Broadcast()
	d.mu.Unlock()
	// Stop every goroutine (an upload still running after a failed flush
	// is cancelled) before giving the lease away.
	d.cancel()
	d.wg.Wait()
	d.mu.Lock()
	fenced := d.fenced
	d.mu.Unlock()
	if d.lease != nil && fenced == nil && ferr == nil {
		// What the last commit left unreferenced goes before the lease.
		d.collect(context.Background())
	}
	if d.lease != nil && fenced == nil {
		ctx, cancel := context.WithTimeout(context.Background(), d.opts.RequestTimeout)
		if err := d.releaseLease(ctx); err != nil && ferr == nil {
			ferr = err
		}
		cancel()
	}
	if ferr != nil {
		return fmt.Errorf("chunked: close: %w", ferr)
	}
	return nil
}

// crash stops the Device like a killed process: no flush, no lease release,
// unstored writes lost. For tests.
func (d *Device) crash() {
	d.mu.Lock()
	d.closed = true
	d.cond.Broadcast()
	d.mu.Unlock()
	d.cancel()
	d.wg.Wait()
}
