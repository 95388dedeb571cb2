package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// DefaultCacheSize is the metadata cache size (L2 tables plus refcount
// blocks) when OpenOptions.CacheSize is zero.
const DefaultCacheSize = 8 << 20

// Entry bits of L1 and L2 tables.
const (
	flagCopied     = 1 << 63 // refcount is exactly one
	flagCompressed = 1 << 62
	flagZero       = 1 << 0
	offsetMask     = 0x00fffffffffffe00 // bits 9-55
)

// Image is an open qcow2 image. See the package comment for its concurrency
// contract.
type Image struct {
	f        image.File
	h        *header
	cs       int64        // cluster size
	l2n      int64        // entries per L2 table
	vsize    atomic.Int64 // the virtual size; Resize and ApplySnapshot change it
	readOnly bool
	lazy     bool
	log      *slog.Logger

	backing     blockdev.Device // nil without one (or with NoBacking)
	backingSize int64
	// backingGiven: backing came from OpenOptions.Backing, which the
	// caller still owns if the open fails.
	backingGiven bool

	zc zcache // recently decompressed clusters

	// ioMu is held shared by every data transfer and exclusively while
	// freed clusters are released, so no transfer reads or writes a
	// cluster that is being reused.
	ioMu sync.RWMutex

	closed atomic.Bool

	mu            sync.Mutex
	l1            []uint64
	l1Dirty       bool
	refTable      []uint64
	refTableDirty bool
	l2c, rbc      *cache
	inflight      map[int64]chan struct{} // guest cluster → closed when its allocation is done
	pendingFree   []int64                 // host clusters to unref once the L2/L1 that dropped them is on disk
	readyFree     []int64                 // host clusters whose unref is safe now
	freeHint      int64                   // first host cluster worth searching for free space
	fileEnd       int64                   // bytes: max(file size, end of every allocated cluster)
	markedDirty   bool                    // the header's dirty bit is set by us
	zNext         int64                   // where the next compressed cluster may go (0: nowhere yet)
	preallocKnown bool                    // prealloc was decided (status.go)
	prealloc      bool                    // the image looks preallocated with metadata (status.go)
}

var (
	_ blockdev.Device     = (*Image)(nil)
	_ blockdev.Trimmer    = (*Image)(nil)
	_ blockdev.ZeroWriter = (*Image)(nil)
	_ blockdev.Extenter   = (*Image)(nil)
	_ blockdev.Describer  = (*Image)(nil)
	_ image.Inspector     = (*Image)(nil)
	_ blockdev.Resizer    = (*Image)(nil)
	_ blockdev.Depther    = (*Image)(nil)
	_ image.Snapshotter   = (*Image)(nil)
)

func init() {
	image.Register(image.Format{
		Name:  "qcow2",
		Probe: probe,
		OpenFile: func(f image.File, opt image.OpenOptions) (blockdev.Device, error) {
			return OpenFile(f, opt)
		},
		CreateFile: CreateFile,
		InfoFile:   InfoFile,
		CheckFile:  CheckFile,
	})
}

// readHeader reads and parses the header of f.
func readHeader(f image.File) (*header, int64, error) {
	size, err := f.Size()
	if err != nil {
		return nil, 0, fmt.Errorf("qcow2: %w", err)
	}
	buf := make([]byte, min(size, 1<<maxClusterBits))
	if _, err := f.ReadAt(buf, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, 0, fmt.Errorf("qcow2: read header: %w", err)
	}
	h, err := parseHeader(buf, size)
	return h, size, err
}

// OpenFile opens the qcow2 image in f. The Image owns f: closing it
// closes f; on error the caller closes f. The backing file is opened
// through opt.Names (image.OpenBacking). A local file also takes qemu's
// lock bytes unless opt.NoLock, so qemu and vdisk see each other's opens.
func OpenFile(f image.File, opt image.OpenOptions) (*Image, error) {
	if err := qemuLock(f, opt.ReadOnly, opt.NoLock); err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, f.Name())
	}
	img, err := open(f, opt)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, f.Name())
	}
	return img, nil
}

// open opens the image in f without locking it.
func open(f image.File, opt image.OpenOptions) (*Image, error) {
	if err := opt.Validate(); err != nil {
		return nil, err
	}
	h, fsize, err := readHeader(f)
	if err != nil {
		return nil, err
	}
	if err := usable(h, opt.ReadOnly); err != nil {
		return nil, err
	}
	if !opt.ReadOnly && h.incompat&incDirty != 0 {
		// Left dirty by an unclean shutdown with lazy refcounts: rebuild
		// the refcounts before anything is allocated.
		opt.Log.Warn("qcow2: image was not closed cleanly; repairing refcounts", "image", f.Name())
		if err := repairRefcounts(f, h, fsize); err != nil {
			return nil, fmt.Errorf("qcow2: repair dirty image: %w", err)
		}
		if fsize, err = f.Size(); err != nil {
			return nil, err
		}
	}
	img := &Image{
		f: f, h: h,
		cs:       h.clusterSize(),
		l2n:      h.l2Entries(),
		readOnly: opt.ReadOnly,
		lazy:     h.compat&compatLazyRefcounts != 0,
		log:      opt.Log,
		inflight: make(map[int64]chan struct{}),
		fileEnd:  fsize,
	}
	img.vsize.Store(int64(h.size))
	cacheSize := opt.CacheSize
	if cacheSize == 0 {
		cacheSize = DefaultCacheSize
	}
	tables := int(cacheSize / img.cs)
	img.l2c = newCache(tables * 3 / 4)
	img.rbc = newCache(tables / 4)
	if img.l1, err = readTable(f, int64(h.l1Off), int(h.l1Size)); err != nil {
		return nil, fmt.Errorf("qcow2: read L1 table: %w", err)
	}
	n := int(int64(h.refTableClusters) * img.cs / 8)
	if img.refTable, err = readTable(f, int64(h.refTableOff), n); err != nil {
		return nil, fmt.Errorf("qcow2: read refcount table: %w", err)
	}
	for i, e := range img.refTable {
		if e&0x1ff != 0 || int64(e)%img.cs != 0 || int64(e) >= fsize {
			return nil, corruptf("refcount table entry %d (%#x) invalid", i, e)
		}
	}
	switch {
	case opt.NoBacking:
	case opt.Backing != nil:
		img.backing, img.backingSize = opt.Backing, opt.Backing.Size()
		img.backingGiven = true
	case h.backingFile != "":
		b := image.Backing{Name: h.backingFile, Format: h.backingFormat}
		if img.backing, err = image.OpenBacking(f, b, opt); err != nil {
			return nil, fmt.Errorf("qcow2: %w", err)
		}
		img.backingSize = img.backing.Size()
	}
	if !opt.ReadOnly && h.autoclear != 0 {
		if err := img.invalidateBitmaps(); err != nil {
			if !img.backingGiven {
				img.closeBacking()
			}
			return nil, err
		}
	}
	return img, nil
}

// autoclearBitmaps is the autoclear bit saying the bitmaps extension is
// consistent.
const autoclearBitmaps = 1 << 0

// invalidateBitmaps prepares an image with autoclear features for writing.
// vdisk does not track dirty bitmaps, so it marks every persistent bitmap
// in use (qemu then treats it as inconsistent, as it is once we write) and
// keeps the bitmaps bit; every other autoclear bit is cleared, as the spec
// requires of a writer that does not know them.
func (img *Image) invalidateBitmaps() error {
	h := img.h
	keep := uint64(0)
	if h.autoclear&autoclearBitmaps != 0 && h.hasBitmaps {
		dir := make([]byte, h.bitmapDirSize)
		if _, err := img.f.ReadAt(dir, int64(h.bitmapDirOff)); err != nil {
			return fmt.Errorf("qcow2: read bitmap directory: %w", err)
		}
		be := binary.BigEndian
		for pos := 0; pos+24 <= len(dir); {
			be.PutUint32(dir[pos+12:], be.Uint32(dir[pos+12:])|1) // in_use
			pos += (24 + int(be.Uint16(dir[pos+18:])) + int(be.Uint32(dir[pos+20:])) + 7) &^ 7
		}
		if _, err := img.f.WriteAt(dir, int64(h.bitmapDirOff)); err != nil {
			return fmt.Errorf("qcow2: write bitmap directory: %w", err)
		}
		keep = autoclearBitmaps
	}
	if h.autoclear == keep {
		return img.sync()
	}
	h.autoclear = keep
	return img.writeHeaderField(88, keep)
}

// usable refuses images this package cannot serve.
func usable(h *header, readOnly bool) error {
	switch {
	case h.cryptMethod == 1:
		return unsupportedf("AES-encrypted image")
	case h.cryptMethod == 2:
		return unsupportedf("LUKS-encrypted image")
	case h.cryptMethod != 0:
		return unsupportedf("crypt_method %d", h.cryptMethod)
	case h.incompat&incDataFile != 0:
		return unsupportedf("external data file %q", h.dataFile)
	case !readOnly && h.incompat&incCorrupt != 0:
		return corruptf("image is marked corrupt; open it read-only or repair it with qemu-img check -r all")
	}
	return nil
}

// readTable reads n big-endian 64-bit entries at off.
func readTable(f io.ReaderAt, off int64, n int) ([]uint64, error) {
	buf := make([]byte, n*8)
	if _, err := f.ReadAt(buf, off); err != nil {
		return nil, err
	}
	t := make([]uint64, n)
	for i := range t {
		t[i] = binary.BigEndian.Uint64(buf[i*8:])
	}
	return t, nil
}

// encodeTable returns t as big-endian bytes.
func encodeTable(t []uint64) []byte {
	buf := make([]byte, len(t)*8)
	for i, e := range t {
		binary.BigEndian.PutUint64(buf[i*8:], e)
	}
	return buf
}

// Size returns the virtual disk size.
func (img *Image) Size() int64 { return img.vsize.Load() }

// ClusterSize returns the image's cluster size.
func (img *Image) ClusterSize() int64 { return img.cs }

// Backing returns the backing device, nil without one.
func (img *Image) Backing() blockdev.Device { return img.backing }

// Info reports block sizes and whether the image is read-only.
func (img *Image) Info() blockdev.Info {
	return blockdev.Info{LogicalBlockSize: 512, PhysicalBlockSize: uint32(min(img.cs, 64<<10)), ReadOnly: img.readOnly}
}

// writeHeaderField writes a big-endian uint64 at off in the header and
// syncs it.
func (img *Image) writeHeaderField(off int64, v uint64) error {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	if _, err := img.f.WriteAt(b[:], off); err != nil {
		return fmt.Errorf("qcow2: write header: %w", err)
	}
	return img.sync()
}

// sync makes every write to the file durable.
func (img *Image) sync() error {
	if err := img.f.Sync(); err != nil {
		return fmt.Errorf("qcow2: sync: %w", err)
	}
	return nil
}

func (img *Image) closeBacking() {
	if img.backing != nil {
		img.backing.Close()
	}
}

// Close flushes every change, clears the dirty bit it set and releases the
// file and the backing chain. It must not be called while I/O is in flight.
func (img *Image) Close() error {
	if !img.closed.CompareAndSwap(false, true) {
		return blockdev.ErrClosed
	}
	img.mu.Lock()
	busy := len(img.inflight) > 0
	img.mu.Unlock()
	if busy {
		img.closed.Store(false)
		return ErrBusy
	}
	var err error
	if !img.readOnly {
		err = img.flush(true)
	}
	img.closeBacking()
	if cerr := img.f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("qcow2: close: %w", cerr)
	}
	return err
}
