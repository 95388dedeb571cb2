package vdi

import (
	"errors"
	"fmt"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// Info reads the facts `vdisk info` shows from the VDI in f.
func Info(f image.File) (*image.Facts, error) {
	img, err := load(f, true)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, f.Name())
	}
	return &image.Facts{Filename: f.Name(), Format: Name, VirtualSize: img.Size(), ClusterSize: img.BlockSize(), DiskSize: image.DiskSize(f)}, nil
}

// Check verifies the VDI's header and block map (entries inside the image
// and the file, no block used twice) and that the header's count of
// allocated blocks matches the map; a mismatch, left by a crash between
// an allocation and its Flush, is counted as a leak. vdi has nothing to
// repair.
func Check(f image.File, opt image.CheckOptions) (*image.CheckResult, error) {
	r := &image.CheckResult{Filename: f.Name(), Format: Name}
	img, err := load(f, true)
	if err != nil {
		if !errors.Is(err, blockdev.ErrCorrupt) && !errors.Is(err, ErrNotVDI) {
			return nil, err
		}
		r.Corruptions++
		r.Messages = append(r.Messages, err.Error())
		return r, nil
	}
	r.TotalClusters = img.h.blocks
	r.AllocatedClusters = img.AllocatedBlocks()
	if r.AllocatedClusters != img.h.allocated {
		r.Leaks++
		r.Messages = append(r.Messages, fmt.Sprintf("header counts %d allocated blocks, the block map %d", img.h.allocated, r.AllocatedClusters))
	}
	r.ImageEndOffset = img.End()
	return r, nil
}
