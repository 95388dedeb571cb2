package vhd

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// Info reads the facts `vdisk info` shows from the VHD at path, without
// opening its parent.
func Info(path string) (*image.Facts, error) {
	ft, _, err := readFooter(path)
	if err != nil {
		return nil, err
	}
	size, err := ft.virtualSize()
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, path)
	}
	fa := &image.Facts{Filename: path, Format: Name, VirtualSize: size, DiskSize: diskSize(path)}
	if ft.diskType == typeFixed {
		return fa, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("vhd: %w", err)
	}
	defer f.Close()
	img, err := load(f, true)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, path)
	}
	fa.ClusterSize = img.blockSize
	if img.diff {
		fa.BackingFile = img.dh.parentName
		fa.BackingFormat = Name
	}
	return fa, nil
}

// diskSize returns the bytes the file really occupies.
func diskSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return s.Blocks * 512
	}
	return st.Size()
}

// Check verifies the VHD's footer, dynamic header and BAT: checksums,
// sizes, and blocks that lie inside the file without overlapping. A
// problem is counted as a corruption and named in Messages; vhd has
// nothing to repair.
func Check(path string, opt image.CheckOptions) (*image.CheckResult, error) {
	r := &image.CheckResult{Filename: path, Format: Name}
	ft, fsize, err := readFooter(path)
	if err == nil {
		_, err = ft.virtualSize()
	}
	if err == nil && ft.diskType == typeFixed {
		r.ImageEndOffset = fsize
		return r, nil
	}
	var img *Image
	if err == nil {
		var f *os.File
		if f, err = os.Open(path); err != nil {
			return nil, fmt.Errorf("vhd: %w", err)
		}
		defer f.Close()
		img, err = load(f, true)
	}
	if err != nil {
		if !errors.Is(err, blockdev.ErrCorrupt) && !errors.Is(err, ErrNotVHD) {
			return nil, err
		}
		r.Corruptions++
		r.Messages = append(r.Messages, err.Error())
		return r, nil
	}
	r.TotalClusters = int64(len(img.bat))
	for _, e := range img.bat {
		if e != batUnused {
			r.AllocatedClusters++
		}
	}
	r.ImageEndOffset = img.freeOff + footerSize
	return r, nil
}
