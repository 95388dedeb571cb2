// Package vmdk reads and writes VMware VMDK images (Virtual Disk Format
// 5.0) as blockdev Devices: monolithicSparse, monolithicFlat,
// twoGbMaxExtentSparse and twoGbMaxExtentFlat read and write,
// streamOptimized (compressed grains) read-only, with parent links
// (parentFileNameHint) opened through the image registry. It registers
// itself as "vmdk".
//
// Extent files are named relative to the descriptor; a name that is
// absolute, climbs out with "..", or resolves through symlinks to a file
// outside the descriptor's directory is refused.
//
// An Image serves reads and writes from many goroutines at once. Each
// sparse extent has a mutex guarding its grain directory, grain tables and
// allocator; data of allocated grains and of flat extents moves outside
// it. A grain allocated in a disk with a parent is filled from the parent
// under the mutex, so no reader sees it half made. Flush syncs the data,
// then writes the grain tables, syncs, writes the grain directories that
// reach new tables and syncs again: a crash before a Flush loses unflushed
// writes and leaves at most unreferenced space at the end of an extent.
package vmdk

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// Name is the format's name in the image registry.
const Name = "vmdk"

// errUnsupported is image.ErrUnsupported, for short.
var errUnsupported = image.ErrUnsupported

func init() {
	image.Register(image.Format{
		Name:   Name,
		Probe:  probe,
		Open:   func(path string, opt image.OpenOptions) (blockdev.Device, error) { return Open(path, opt) },
		Create: Create,
		Stream: stream,
		Info:   Info,
		Check:  Check,
	})
}

// stream writes a streamOptimized image (-o subformat=streamOptimized);
// every other subformat is created in place.
func stream(path string, src blockdev.Device, opt image.CreateOptions) (bool, error) {
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
	return true, WriteStreamOptimized(path, src, opt.ClusterSize)
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
	file           *os.File // flat extents
	fileOff        int64    // bytes, flat extents
	sp             *sparse  // sparse extents
}

// Image is an open VMDK. See the package comment for its concurrency
// contract.
type Image struct {
	path     string
	desc     *descriptor
	extents  []*extent
	files    []*os.File
	size     int64
	readOnly bool
	parent   blockdev.Device
	log      *slog.Logger
	closed   atomic.Bool

	// The descriptor's CID changes before the first write, as VMware
	// and qemu do, so children made before it no longer match.
	cidFile *os.File // where the descriptor is; nil when there is none
	cidAt   int64    // file offset of the CID's eight hex digits
	cidMu   sync.Mutex
	cidDone atomic.Bool
}

// cidLine finds the descriptor's CID value.
var cidLine = regexp.MustCompile(`(?m)^CID=([0-9a-fA-F]{8})[ \t\r]*$`)

// noteCID remembers where the CID of the descriptor text at file offset
// base of f is.
func (img *Image) noteCID(f *os.File, text []byte, base int64) {
	if m := cidLine.FindSubmatchIndex(text); m != nil {
		img.cidFile, img.cidAt = f, base+int64(m[2])
	}
}

// changeCID gives the descriptor a new CID before the first write.
func (img *Image) changeCID() error {
	if img.cidDone.Load() || img.cidFile == nil {
		return nil
	}
	img.cidMu.Lock()
	defer img.cidMu.Unlock()
	if img.cidDone.Load() {
		return nil
	}
	cid := newCID()
	if _, err := img.cidFile.WriteAt([]byte(cid), img.cidAt); err != nil {
		return fmt.Errorf("vmdk: update the descriptor's CID: %w", err)
	}
	if err := unix.Fdatasync(int(img.cidFile.Fd())); err != nil {
		return fmt.Errorf("vmdk: sync the descriptor: %w", err)
	}
	img.desc.cid = cid
	img.cidDone.Store(true)
	return nil
}

var (
	_ blockdev.Device    = (*Image)(nil)
	_ blockdev.Extenter  = (*Image)(nil)
	_ blockdev.Describer = (*Image)(nil)
)

// Open opens the VMDK whose descriptor (or monolithic sparse file) is at
// path.
func Open(path string, opt image.OpenOptions) (*Image, error) {
	if err := opt.Validate(); err != nil {
		return nil, err
	}
	img := &Image{path: path, readOnly: opt.ReadOnly, log: opt.Log}
	if err := img.open(opt); err != nil {
		img.release()
		return nil, fmt.Errorf("%w (in %s)", err, path)
	}
	return img, nil
}

// openFile opens and locks one file of the image.
func (img *Image) openFile(p string, readOnly, noLock bool) (*os.File, error) {
	f, err := image.OpenPath("vmdk", p, image.OpenOptions{ReadOnly: readOnly, NoLock: noLock})
	if err != nil {
		return nil, err
	}
	img.files = append(img.files, f)
	return f, nil
}

func (img *Image) open(opt image.OpenOptions) error {
	f, err := img.openFile(img.path, opt.ReadOnly, opt.NoLock)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("vmdk: %w", err)
	}
	head := make([]byte, sectorSize)
	n, _ := f.ReadAt(head, 0)
	var self *sparseHeader
	if n == sectorSize && binary.LittleEndian.Uint32(head) == magicKDMV {
		if self, err = parseSparseHeader(head); err != nil {
			return err
		}
		if self.descSize == 0 {
			// A lone sparse extent: a disk of its capacity.
			img.desc = &descriptor{parentCID: noParent, createType: "monolithicSparse",
				extents: []extentLine{{access: "RW", sectors: self.capacity, kind: kindSparse, file: filepath.Base(img.path)}}}
		} else {
			if self.descOff < 1 || (self.descOff+self.descSize)*sectorSize > st.Size() {
				return corruptf("embedded descriptor at sector %d outside the file", self.descOff)
			}
			text := make([]byte, self.descSize*sectorSize)
			if _, err := f.ReadAt(text, self.descOff*sectorSize); err != nil {
				return fmt.Errorf("vmdk: read embedded descriptor: %w", err)
			}
			if i := strings.IndexByte(string(text), 0); i >= 0 {
				text = text[:i]
			}
			if img.desc, err = parseDescriptor(string(text)); err != nil {
				return err
			}
			img.noteCID(f, text, self.descOff*sectorSize)
			if len(img.desc.extents) != 1 || img.desc.extents[0].kind != kindSparse {
				return corruptf("embedded descriptor must name one sparse extent, the file itself")
			}
		}
	} else {
		text := make([]byte, min(st.Size(), maxDescriptor))
		if _, err := f.ReadAt(text, 0); err != nil {
			return fmt.Errorf("vmdk: read descriptor: %w", err)
		}
		if !probe(text) && !strings.Contains(string(text), "createType") {
			return ErrNotVMDK
		}
		if img.desc, err = parseDescriptor(string(text)); err != nil {
			return err
		}
		img.noteCID(f, text, 0)
	}
	if err := img.openExtents(f, self, opt); err != nil {
		return err
	}
	if img.desc.parentCID != noParent && !opt.NoBacking {
		if img.desc.parentHint == "" {
			return corruptf("parentCID %s without a parentFileNameHint", img.desc.parentCID)
		}
		if img.parent, err = openParent(img.path, img.desc.parentHint, opt); err != nil {
			return err
		}
	}
	return nil
}

// openExtents opens every extent the descriptor names. self is the header
// of the file at img.path when it is a sparse extent itself.
func (img *Image) openExtents(f *os.File, self *sparseHeader, opt image.OpenOptions) error {
	dir := filepath.Dir(img.path)
	seen := map[string]bool{}
	var start int64
	for i, l := range img.desc.extents {
		if l.access == "NOACCESS" {
			return fmt.Errorf("vmdk: extent %d is NOACCESS: %w", i, errUnsupported)
		}
		e := &extent{start: start, sectors: l.sectors, kind: l.kind, readOnly: l.access == "RDONLY"}
		ro := opt.ReadOnly || e.readOnly
		if start += l.sectors; start > maxSectors {
			return corruptf("extents add up to more than 64 TiB")
		}
		switch {
		case l.kind == kindZero:
		case self != nil:
			sp, err := openSparse(f, img.path, self, l.sectors)
			if err != nil {
				return err
			}
			e.sp = sp
		default:
			p, err := extentPath(dir, l.file)
			if err != nil {
				return err
			}
			if seen[p] {
				return corruptf("extent file %q named twice", l.file)
			}
			seen[p] = true
			ef, err := img.openFile(p, ro, opt.NoLock)
			if err != nil {
				return err
			}
			st, err := ef.Stat()
			if err != nil {
				return fmt.Errorf("vmdk: %w", err)
			}
			if l.kind == kindSparse {
				head := make([]byte, sectorSize)
				if _, err := ef.ReadAt(head, 0); err != nil {
					return fmt.Errorf("vmdk: read header of extent %s: %w", l.file, err)
				}
				h, err := parseSparseHeader(head)
				if err != nil {
					return fmt.Errorf("vmdk: extent %s: %w", l.file, err)
				}
				if e.sp, err = openSparse(ef, p, h, l.sectors); err != nil {
					return fmt.Errorf("vmdk: extent %s: %w", l.file, err)
				}
			} else {
				e.file, e.fileOff = ef, l.offset*sectorSize
				if end := e.fileOff + l.sectors*sectorSize; end > st.Size() {
					return corruptf("flat extent %s needs %d bytes, the file has %d: truncated", l.file, end, st.Size())
				}
			}
		}
		if e.sp != nil && e.sp.compressed && !opt.ReadOnly {
			return fmt.Errorf("vmdk: stream-optimized (compressed) extents are read-only here; open read-only or convert: %w", errUnsupported)
		}
		img.extents = append(img.extents, e)
	}
	img.size = start * sectorSize
	return nil
}

// extentPath resolves an extent file name against the descriptor's
// directory, refusing names that leave it.
func extentPath(dir, name string) (string, error) {
	if !filepath.IsLocal(name) {
		return "", fmt.Errorf("vmdk: extent %q: %w", name, ErrExtentPath)
	}
	p := filepath.Join(dir, name)
	cdir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", fmt.Errorf("vmdk: %w", err)
	}
	cp, err := filepath.EvalSymlinks(p)
	if err != nil {
		return "", fmt.Errorf("vmdk: extent %q: %w", name, err)
	}
	if rel, err := filepath.Rel(cdir, cp); err != nil || !filepath.IsLocal(rel) {
		return "", fmt.Errorf("vmdk: extent %q resolves to %s: %w", name, cp, ErrExtentPath)
	}
	return p, nil
}

// release closes everything open has opened.
func (img *Image) release() {
	if img.parent != nil {
		img.parent.Close()
	}
	for _, f := range img.files {
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
	for _, f := range img.files {
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			return fmt.Errorf("vmdk: sync %s: %w", f.Name(), err)
		}
	}
	for _, e := range img.extents {
		if e.sp != nil {
			if err := e.sp.flush(); err != nil {
				return err
			}
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
	return err
}
