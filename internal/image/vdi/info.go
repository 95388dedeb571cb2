package vdi

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// Info reads the facts `vdisk info` shows from the VDI at path.
func Info(path string) (*image.Facts, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("vdi: %w", err)
	}
	defer f.Close()
	img, err := load(f)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, path)
	}
	fa := &image.Facts{Filename: path, Format: Name, VirtualSize: img.size, ClusterSize: img.bs}
	if st, err := f.Stat(); err == nil {
		fa.DiskSize = st.Size()
		if s, ok := st.Sys().(*syscall.Stat_t); ok {
			fa.DiskSize = s.Blocks * 512
		}
	}
	return fa, nil
}

// Check verifies the VDI's header and block map (entries inside the image
// and the file, no block used twice) and that the header's count of
// allocated blocks matches the map; a mismatch, left by a crash between
// an allocation and its Flush, is counted as a leak. vdi has nothing to
// repair.
func Check(path string, opt image.CheckOptions) (*image.CheckResult, error) {
	r := &image.CheckResult{Filename: path, Format: Name}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("vdi: %w", err)
	}
	defer f.Close()
	img, err := load(f)
	if err != nil {
		if !errors.Is(err, blockdev.ErrCorrupt) && !errors.Is(err, ErrNotVDI) {
			return nil, err
		}
		r.Corruptions++
		r.Messages = append(r.Messages, err.Error())
		return r, nil
	}
	r.TotalClusters = img.h.blocks
	for _, e := range img.bmap {
		if e != blockFree && e != blockZero {
			r.AllocatedClusters++
		}
	}
	if r.AllocatedClusters != img.h.allocated {
		r.Leaks++
		r.Messages = append(r.Messages, fmt.Sprintf("header counts %d allocated blocks, the block map %d", img.h.allocated, r.AllocatedClusters))
	}
	r.ImageEndOffset = img.h.dataOff + img.next*img.bs
	return r, nil
}
