// Package iso serves ISO 9660 images (CD-ROM and DVD images) as read-only
// blockdev Devices with 2048-byte blocks. It registers itself with the
// image registry as "iso".
//
// An ISO image is detected by "CD001" in its first volume descriptor, 32 KiB
// into the file; the registry's probe must read that far (see
// MagicOffset). The device is the file itself, its size rounded up to whole
// 2048-byte blocks (the tail reads as zeroes). It has no Trimmer or
// ZeroWriter: it cannot be written. All methods are safe for concurrent
// use; Close must not race with I/O still in flight.
package iso

import (
	"fmt"
	"sync/atomic"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// Name is the format's name in the image registry.
const Name = "iso"

func init() {
	image.Register(image.Format{
		Name:      Name,
		Probe:     probe,
		ReadOnly:  true,
		OpenFile:  func(f image.File, opt image.OpenOptions) (blockdev.Device, error) { return Open(f, opt) },
		InfoFile:  Info,
		CheckFile: Check,
	})
}

// Image is an open ISO image.
type Image struct {
	f        blockdev.Device
	file     image.File // the file f serves, named in block status
	fileSize int64
	size     int64
	vol      *Volume
	closed   atomic.Bool
}

var (
	_ blockdev.Device    = (*Image)(nil)
	_ blockdev.Extenter  = (*Image)(nil)
	_ blockdev.Describer = (*Image)(nil)
	_ image.Layer        = (*Image)(nil)
)

// Open opens the ISO image in f, read-only whatever opt.ReadOnly says. On
// success the Image owns f.
func Open(f image.File, opt image.OpenOptions) (*Image, error) {
	fsize, err := f.Size()
	if err != nil {
		return nil, fmt.Errorf("iso: %w", err)
	}
	vol, err := readVolume(f, fsize)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, f.Name())
	}
	dev, err := image.AsDevice(f, true)
	if err != nil {
		return nil, fmt.Errorf("iso: %w", err)
	}
	return &Image{f: dev, file: f, fileSize: fsize, size: (fsize + BlockSize - 1) &^ (BlockSize - 1), vol: vol}, nil
}

// Volume returns what the primary volume descriptor says.
func (img *Image) Volume() Volume { return *img.vol }

// Size returns the device size: the file's, rounded up to whole blocks.
func (img *Image) Size() int64 { return img.size }

// Info reports 2048-byte blocks and a read-only device.
func (img *Image) Info() blockdev.Info {
	return blockdev.Info{LogicalBlockSize: BlockSize, PhysicalBlockSize: BlockSize, ReadOnly: true}
}

// ReadAt reads len(p) bytes at off; the padding past the file reads as
// zeroes.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	if img.closed.Load() {
		return 0, blockdev.ErrClosed
	}
	if err := blockdev.CheckRange(off, int64(len(p)), img.size); err != nil {
		return 0, err
	}
	n := max(0, min(int64(len(p)), img.fileSize-off))
	if n > 0 {
		if _, err := img.f.ReadAt(p[:n], off); err != nil {
			return 0, fmt.Errorf("iso: read at %d: %w", off, err)
		}
	}
	clear(p[n:])
	return len(p), nil
}

// WriteAt refuses: an ISO image is read-only.
func (img *Image) WriteAt(p []byte, off int64) (int, error) {
	if img.closed.Load() {
		return 0, blockdev.ErrClosed
	}
	if err := blockdev.CheckRange(off, int64(len(p)), img.size); err != nil {
		return 0, err
	}
	return 0, blockdev.ErrReadOnly
}

// Flush has nothing to do.
func (img *Image) Flush() error {
	if img.closed.Load() {
		return blockdev.ErrClosed
	}
	return nil
}

// Close releases the file.
func (img *Image) Close() error {
	if !img.closed.CompareAndSwap(false, true) {
		return blockdev.ErrClosed
	}
	return img.f.Close()
}

// Extents reports the file's holes and data; the padding is a hole.
func (img *Image) Extents(off, n int64) ([]blockdev.Extent, error) {
	if img.closed.Load() {
		return nil, blockdev.ErrClosed
	}
	if err := blockdev.CheckRange(off, n, img.size); err != nil {
		return nil, err
	}
	if off >= img.fileSize {
		return []blockdev.Extent{{Off: off, Len: n, Flags: blockdev.ExtentHole | blockdev.ExtentZero}}, nil
	}
	return blockdev.Extents(img.f, off, min(n, img.fileSize-off))
}

// Info reads the facts `vdisk info` shows. Facts has no media or block
// size field: ClusterSize carries the 2048-byte block size; Media and
// BlockSize name the rest.
func Info(f image.File) (*image.Facts, error) {
	size, err := f.Size()
	if err != nil {
		return nil, fmt.Errorf("iso: %w", err)
	}
	if _, err := readVolume(f, size); err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, f.Name())
	}
	return &image.Facts{Filename: f.Name(), Format: Name, VirtualSize: (size + BlockSize - 1) &^ (BlockSize - 1), ClusterSize: BlockSize, DiskSize: image.DiskSize(f)}, nil
}

// Check verifies the volume descriptor set: a primary descriptor whose
// volume fits the file, and a terminator.
func Check(f image.File, opt image.CheckOptions) (*image.CheckResult, error) {
	size, err := f.Size()
	if err != nil {
		return nil, fmt.Errorf("iso: %w", err)
	}
	r := &image.CheckResult{Filename: f.Name(), Format: Name, ImageEndOffset: size}
	vol, err := readVolume(f, size)
	if err != nil {
		r.Corruptions++
		r.Messages = append(r.Messages, err.Error())
		return r, nil
	}
	r.TotalClusters, r.AllocatedClusters = vol.Blocks, vol.Blocks
	return r, nil
}

// LayerStatus describes the run at off as qemu describes an ISO file,
// which it opens as raw: every byte is the file's own, at its own offset,
// holes (and the padding past the file's end) reading as zeroes.
func (img *Image) LayerStatus(off, n int64) (image.Status, error) {
	es, err := img.Extents(off, n)
	if err != nil {
		return image.Status{}, err
	}
	if len(es) == 0 || es[0].Off != off || es[0].Len <= 0 {
		return image.Status{}, fmt.Errorf("iso: no extents at %d", off)
	}
	e := es[0]
	return image.Status{
		Len:       min(e.Len, n),
		Allocated: true,
		Data:      e.Flags&blockdev.ExtentHole == 0,
		Zero:      e.Flags&blockdev.ExtentZero != 0,
		File:      img.file,
		Offset:    off,
	}, nil
}

// BackingDevice is nil: an ISO image names no other file.
func (img *Image) BackingDevice() blockdev.Device { return nil }
