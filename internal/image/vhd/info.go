package vhd

import (
	"errors"
	"fmt"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// Info reads the facts `vdisk info` shows from the VHD in f, without
// opening its parent.
func Info(f image.File) (*image.Facts, error) {
	md, err := load(f)
	if err == nil {
		_, err = newImage(f, md, true, nil)
	}
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, f.Name())
	}
	fa := &image.Facts{Filename: f.Name(), Format: Name, VirtualSize: md.size, DiskSize: image.DiskSize(f)}
	if md.dh != nil {
		fa.ClusterSize = int64(md.dh.blockSize)
	}
	if md.diff() {
		fa.BackingFile = md.dh.parentName
		fa.BackingFormat = Name
	}
	return fa, nil
}

// Check verifies the VHD's footer, dynamic header and BAT: checksums,
// sizes, and blocks that lie inside the file without overlapping. A
// problem is counted as a corruption and named in Messages; vhd has
// nothing to repair.
func Check(f image.File, opt image.CheckOptions) (*image.CheckResult, error) {
	r := &image.CheckResult{Filename: f.Name(), Format: Name}
	md, err := load(f)
	var img *Image
	if err == nil {
		img, err = newImage(f, md, true, nil)
	}
	if err != nil {
		if !errors.Is(err, blockdev.ErrCorrupt) && !errors.Is(err, ErrNotVHD) {
			return nil, err
		}
		r.Corruptions++
		r.Messages = append(r.Messages, err.Error())
		return r, nil
	}
	if md.dh == nil {
		r.ImageEndOffset = md.fsize
		return r, nil
	}
	r.TotalClusters = int64(md.dh.maxEntries)
	r.AllocatedClusters = img.AllocatedBlocks()
	r.ImageEndOffset = img.End() + footerSize
	return r, nil
}
