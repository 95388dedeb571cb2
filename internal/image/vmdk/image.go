// Package vmdk reads and writes VMware VMDK images (Virtual Disk Format
// 5.0) as blockdev Devices: monolithicSparse, monolithicFlat,
// twoGbMaxExtentSparse and twoGbMaxExtentFlat read and write,
// streamOptimized (compressed grains) read-only and streamed, with parent
// links (parentFileNameHint) opened through image.OpenBacking. It
// registers itself as "vmdk".
//
// The format works on an image.File: the descriptor, or the single file
// of a monolithicSparse or streamOptimized disk. Every extent file the
// descriptor names is opened (and at create made) through the Names of
// the options, the one trust policy: so a single-file VMDK works over any
// File, and a descriptor that names files works where Names allows it.
//
// Each sparse extent is served by the blockmap core, one Map over its
// grain tables (loaded when first needed, the clean ones dropped when
// there are many): reads and writes from many goroutines at once, a new
// grain (after its grain table when the directory has none) taken from
// the end of the extent, filled from the parent under the Map's mutex,
// and at Flush the data synced, then the grain directories, then the
// grain tables: a crash before a Flush loses unflushed writes and leaves
// at most unreferenced space at the end of an extent. Compressed grains
// (streamOptimized, read-only) are read by the package's own path; flat
// and ZERO extents need no map.
package vmdk

import (
	"encoding/binary"
	"fmt"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
	"vdisk/internal/image/blockmap"
)

// Name is the format's name in the image registry.
const Name = "vmdk"

// errUnsupported is image.ErrUnsupported, for short.
var errUnsupported = image.ErrUnsupported

func init() {
	image.Register(image.Format{
		Name:       Name,
		Probe:      probe,
		OpenFile:   openFile,
		CreateFile: createFile,
		StreamFile: stream,
		InfoFile:   info,
		CheckFile:  check,
	})
}

// stream writes a streamOptimized image (-o subformat=streamOptimized)
// into f; every other subformat is created in place.
func stream(f image.File, src blockdev.Device, opt image.CreateOptions) (bool, error) {
	if opt.Options["subformat"] != StreamOptimized {
		return false, nil
	}
	for k := range opt.Options {
		if k != "subformat" {
			return true, fmt.Errorf("vmdk: unknown option %q for %s (known: subformat)", k, StreamOptimized)
		}
	}
	if opt.BackingFile != "" {
		return true, fmt.Errorf("vmdk: a %s image has no parent", StreamOptimized)
	}
	return true, writeStreamOptimized(f, src, opt.ClusterSize)
}

// probe matches a sparse extent's magic or a descriptor file's first line.
func probe(b []byte) bool {
	if len(b) >= 4 && binary.LittleEndian.Uint32(b) == magicKDMV {
		return true
	}
	return strings.HasPrefix(string(b), "# Disk DescriptorFile")
}

// corruptf returns an error wrapping blockdev.ErrCorrupt.
func corruptf(format string, a ...any) error {
	return fmt.Errorf("vmdk: "+format+": %w", append(a, blockdev.ErrCorrupt)...)
}

// extent is one extent of the disk.
type extent struct {
	start, sectors int64 // guest sectors
	kind           string
	readOnly       bool
	file           image.File // flat extents
	fileOff        int64      // bytes, flat extents
	sp             *sparse    // sparse extents
	m              *blockmap.Map
}

// Image is an open VMDK. See the package comment for its concurrency
// contract.
type Image struct {
	f        image.File   // the descriptor or the single file
	named    []image.File // the extent files f names
	desc     *descriptor
	extents  []*extent
	size     int64
	readOnly bool
	parent   blockdev.Device
	closed   atomic.Bool

	// The descriptor's CID changes before the first write, as VMware
	// and qemu do, so children made before it no longer match.
	cidAt   int64 // offset of the CID's eight hex digits in f; 0 when none
	cidMu   sync.Mutex
	cidDone atomic.Bool
}

// cidLine finds the descriptor's CID value.
var cidLine = regexp.MustCompile(`(?m)^CID=([0-9a-fA-F]{8})[ \t\r]*$`)

// noteCID remembers where the CID of the descriptor text at offset base
// of f is.
func (img *Image) noteCID(text []byte, base int64) {
	if m := cidLine.FindSubmatchIndex(text); m != nil {
		img.cidAt = base + int64(m[2])
	}
}

// changeCID gives the descriptor a new CID before the first write.
func (img *Image) changeCID() error {
	if img.cidDone.Load() || img.cidAt == 0 {
		return nil
	}
	img.cidMu.Lock()
	defer img.cidMu.Unlock()
	if img.cidDone.Load() {
		return nil
	}
	cid := newCID()
	if _, err := img.f.WriteAt([]byte(cid), img.cidAt); err != nil {
		return fmt.Errorf("vmdk: update the descriptor's CID: %w", err)
	}
	if err := img.f.Sync(); err != nil {
		return fmt.Errorf("vmdk: sync the descriptor: %w", err)
	}
	img.desc.cid = cid
	img.cidDone.Store(true)
	return nil
}

var (
	_ blockdev.Device     = (*Image)(nil)
	_ blockdev.Trimmer    = (*Image)(nil)
	_ blockdev.ZeroWriter = (*Image)(nil)
	_ blockdev.Extenter   = (*Image)(nil)
	_ blockdev.Describer  = (*Image)(nil)
)

// openFile opens the VMDK whose descriptor (or single sparse file) is f
// (the registry's OpenFile): the extents it names through opt.Names, the
// parent through image.OpenBacking.
func openFile(f image.File, opt image.OpenOptions) (blockdev.Device, error) {
	img, err := open(f, opt)
	if err != nil {
		return nil, err
	}
	return img, nil
}

// open opens the VMDK in f; on error it closes what it opened, not f.
func open(f image.File, opt image.OpenOptions) (*Image, error) {
	if opt.Names == nil {
		opt.Names = image.LocalNames{NoLock: opt.NoLock}
	}
	img := &Image{f: f, readOnly: opt.ReadOnly}
	err := img.open(opt)
	if err != nil {
		img.release()
		return nil, fmt.Errorf("%w (in %s)", err, f.Name())
	}
	return img, nil
}

// readDescriptor reads the descriptor of the VMDK in f: embedded in a
// sparse file (whose header it returns), or the file itself. A lone
// sparse extent gets the descriptor of a disk of its capacity. base is
// the descriptor's offset in f, text its text.
func readDescriptor(f image.File) (d *descriptor, self *sparseHeader, text []byte, base int64, err error) {
	fsize, err := f.Size()
	if err != nil {
		return nil, nil, nil, 0, fmt.Errorf("vmdk: %w", err)
	}
	head := make([]byte, sectorSize)
	n, _ := f.ReadAt(head, 0)
	if n < sectorSize || binary.LittleEndian.Uint32(head) != magicKDMV {
		text = make([]byte, min(fsize, maxDescriptor))
		if _, err := f.ReadAt(text, 0); err != nil {
			return nil, nil, nil, 0, fmt.Errorf("vmdk: read descriptor: %w", err)
		}
		if !probe(text) && !strings.Contains(string(text), "createType") {
			return nil, nil, nil, 0, ErrNotVMDK
		}
		if fsize > maxDescriptor {
			return nil, nil, nil, 0, corruptf("descriptor file of %d bytes is larger than %d", fsize, maxDescriptor)
		}
		d, err = parseDescriptor(string(text))
		return d, nil, text, 0, err
	}
	if self, err = parseSparseHeader(head); err != nil {
		return nil, nil, nil, 0, err
	}
	if self.descSize == 0 {
		d = &descriptor{parentCID: noParent, createType: MonolithicSparse,
			extents: []extentLine{{access: "RW", sectors: self.capacity, kind: kindSparse, file: filepath.Base(f.Name())}}}
		return d, self, nil, 0, nil
	}
	if self.descOff < 1 || self.descOff > fsize/sectorSize || self.descSize > fsize/sectorSize-self.descOff {
		return nil, nil, nil, 0, corruptf("embedded descriptor of %d sectors at sector %d outside the file of %d bytes", self.descSize, self.descOff, fsize)
	}
	base = self.descOff * sectorSize
	text = make([]byte, self.descSize*sectorSize)
	if _, err := f.ReadAt(text, base); err != nil {
		return nil, nil, nil, 0, fmt.Errorf("vmdk: read embedded descriptor: %w", err)
	}
	if i := strings.IndexByte(string(text), 0); i >= 0 {
		text = text[:i]
	}
	if d, err = parseDescriptor(string(text)); err != nil {
		return nil, nil, nil, 0, err
	}
	if len(d.extents) != 1 || d.extents[0].kind != kindSparse {
		return nil, nil, nil, 0, corruptf("embedded descriptor must name one sparse extent, the file itself")
	}
	return d, self, text, base, nil
}

func (img *Image) open(opt image.OpenOptions) error {
	d, self, text, base, err := readDescriptor(img.f)
	if err != nil {
		return err
	}
	img.desc = d
	img.noteCID(text, base)
	if err := img.openExtents(self, opt); err != nil {
		return err
	}
	if img.desc.parentCID != noParent && !opt.NoBacking {
		if img.desc.parentHint == "" {
			return corruptf("parentCID %s without a parentFileNameHint", img.desc.parentCID)
		}
		img.parent, err = image.OpenBacking(img.f, image.Backing{Name: img.desc.parentHint, Format: Name, What: "parent"}, opt)
		if err != nil {
			return fmt.Errorf("vmdk: %w", err)
		}
	}
	for _, e := range img.extents {
		if err := img.serve(e, opt.ReadOnly || e.readOnly); err != nil {
			return err
		}
	}
	return nil
}

// serve puts extent e on the blockmap core: a sparse extent's Map over
// its grain tables, loaded when first needed; a flat extent's of one
// block where the descriptor puts it; a ZERO extent's of one zero block.
func (img *Image) serve(e *extent, readOnly bool) error {
	c := blockmap.Config{Name: "vmdk", Size: e.sectors * sectorSize, Parent: img.parent, ParentOff: e.start * sectorSize,
		Layered: img.desc.parentCID != noParent, ReadOnly: readOnly, Borrowed: true,
		// qemu's vmdk: unallocated grains read as zeroes without a
		// parent; flat extents' data over holes of their file as zeroes.
		Status: blockmap.StatusRules{Backing: true, Recurse: e.sp == nil}}
	if s := e.sp; s != nil {
		c.File, c.BlockSize, c.Blocks, c.Codec = s.f, s.grainBytes, (s.sectors+s.h.grain-1)/s.h.grain, s
		c.Lazy, c.Unit, c.EntrySize, c.TableName = true, 4*s.h.gtes, 4, "grain table"
		c.End, c.ReadOnly = (s.fsize+sectorSize-1)&^(sectorSize-1), readOnly || s.compressed
		c.Status.Compressed = s.compressed
	} else {
		c.File, c.BlockSize, c.Blocks, c.Codec = e.file, max(c.Size, 1), 1, flatCodec{e.fileOff, e.kind == kindZero}
		if e.kind == kindZero {
			c.File = img.f
		}
	}
	var err error
	e.m, err = blockmap.New(c)
	return err
}

// flatCodec maps a flat extent, one block at off in its file, or a ZERO
// extent.
type flatCodec struct {
	off  int64
	zero bool
}

func (c flatCodec) Get([]byte, int64) blockmap.Entry {
	if c.zero {
		return blockmap.Entry{State: blockmap.Zero}
	}
	return blockmap.Entry{State: blockmap.Data, Off: c.off}
}
func (flatCodec) Put([]byte, int64, blockmap.Entry) int64 { return 0 }
func (flatCodec) Commit(int64) error                      { return nil }
func (flatCodec) Place(int64, int64) (blockmap.Placement, error) {
	return blockmap.Placement{}, fmt.Errorf("vmdk: a ZERO extent cannot store data: %w", blockdev.ErrReadOnly)
}

// openExtents opens every extent the descriptor names, through
// opt.Names. self is the header of img.f when it is a sparse extent
// itself.
func (img *Image) openExtents(self *sparseHeader, opt image.OpenOptions) error {
	seen := map[string]bool{}
	var start int64
	for i, l := range img.desc.extents {
		if l.access == "NOACCESS" {
			return fmt.Errorf("vmdk: extent %d is NOACCESS: %w", i, errUnsupported)
		}
		e := &extent{start: start, sectors: l.sectors, kind: l.kind, readOnly: l.access == "RDONLY"}
		if start += l.sectors; start > maxSectors {
			return corruptf("extents add up to more than 64 TiB")
		}
		var err error
		switch {
		case l.kind == kindZero:
		case self != nil:
			e.sp, err = openSparse(img.f, self, l.sectors)
		default:
			err = img.openNamed(e, l, seen, opt)
		}
		if err != nil {
			return err
		}
		if e.sp != nil && e.sp.compressed && !opt.ReadOnly {
			return fmt.Errorf("vmdk: stream-optimized (compressed) extents are read-only here; open read-only or convert: %w", errUnsupported)
		}
		img.extents = append(img.extents, e)
	}
	img.size = start * sectorSize
	return nil
}

// openNamed opens the extent file of line l through opt.Names into e.
// seen holds the identities of the files opened so far.
func (img *Image) openNamed(e *extent, l extentLine, seen map[string]bool, opt image.OpenOptions) error {
	ef, err := opt.Names.Open(img.f, l.file, opt.ReadOnly || e.readOnly)
	if err != nil {
		return fmt.Errorf("vmdk: extent %q: %w", l.file, err)
	}
	img.named = append(img.named, ef)
	id := ef.Name()
	if i, ok := ef.(image.Identified); ok {
		id = i.Identity()
	}
	if seen[id] {
		return corruptf("extent file %q named twice", l.file)
	}
	seen[id] = true
	if l.kind == kindSparse {
		head := make([]byte, sectorSize)
		if _, err := ef.ReadAt(head, 0); err != nil {
			return fmt.Errorf("vmdk: read header of extent %s: %w", l.file, err)
		}
		h, err := parseSparseHeader(head)
		if err == nil {
			e.sp, err = openSparse(ef, h, l.sectors)
		}
		if err != nil {
			return fmt.Errorf("vmdk: extent %s: %w", l.file, err)
		}
		return nil
	}
	size, err := ef.Size()
	if err != nil {
		return fmt.Errorf("vmdk: %w", err)
	}
	e.file, e.fileOff = ef, l.offset*sectorSize
	if end := e.fileOff + l.sectors*sectorSize; end > size {
		return corruptf("flat extent %s needs %d bytes, the file has %d: truncated", l.file, end, size)
	}
	return nil
}

// release closes the extent files and the parent (not f).
func (img *Image) release() {
	if img.parent != nil {
		img.parent.Close()
	}
	for _, f := range img.named {
		f.Close()
	}
}

// Size returns the virtual disk size.
func (img *Image) Size() int64 { return img.size }

// Parent returns the parent device, nil without one.
func (img *Image) Parent() blockdev.Device { return img.parent }

// CreateType returns the descriptor's createType (the subformat).
func (img *Image) CreateType() string { return img.desc.createType }

// Info reports block sizes and whether the image is read-only.
func (img *Image) Info() blockdev.Info {
	return blockdev.Info{LogicalBlockSize: sectorSize, PhysicalBlockSize: 4096, ReadOnly: img.readOnly}
}

// find returns the index of the extent holding guest byte off.
func (img *Image) find(off int64) int {
	s := off / sectorSize
	return sort.Search(len(img.extents), func(i int) bool { return img.extents[i].start+img.extents[i].sectors > s })
}

// Flush makes every completed write durable.
func (img *Image) Flush() error {
	if img.closed.Load() {
		return blockdev.ErrClosed
	}
	if img.readOnly {
		return nil
	}
	for _, e := range img.extents {
		if err := e.m.Flush(); err != nil {
			return err
		}
	}
	return nil
}

// Close flushes every change and releases the files and the parent.
func (img *Image) Close() error {
	if img.closed.Load() {
		return blockdev.ErrClosed
	}
	err := img.Flush()
	img.closed.Store(true)
	img.release()
	if cerr := img.f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("vmdk: close: %w", cerr)
	}
	return err
}
