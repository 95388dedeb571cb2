package vmdk

import (
	"errors"
	"fmt"
	"syscall"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// Info reads the facts `vdisk info` shows from the VMDK at path, without
// opening its parent. Facts has no subformat field: CreateType on an open
// Image gives it.
func Info(path string) (*image.Facts, error) {
	img, err := Open(path, image.OpenOptions{ReadOnly: true, NoBacking: true, NoLock: true})
	if err != nil {
		return nil, err
	}
	defer img.Close()
	fa := &image.Facts{Filename: path, Format: Name, VirtualSize: img.size, BackingFile: img.desc.parentHint}
	if img.desc.parentHint != "" {
		fa.BackingFormat = Name
	}
	for _, f := range img.files {
		if st, err := f.Stat(); err == nil {
			if s, ok := st.Sys().(*syscall.Stat_t); ok {
				fa.DiskSize += s.Blocks * 512
			} else {
				fa.DiskSize += st.Size()
			}
		}
	}
	for _, e := range img.extents {
		if e.sp != nil {
			fa.ClusterSize = e.sp.grainBytes
			break
		}
	}
	return fa, nil
}

// Check opens the VMDK (without its parent) and reads every grain table,
// verifying the header, the descriptor, the extent paths and every grain
// directory and table entry. A problem is counted as a corruption and
// named in Messages; vmdk has nothing to repair.
func Check(path string, opt image.CheckOptions) (*image.CheckResult, error) {
	r := &image.CheckResult{Filename: path, Format: Name}
	corrupt := func(err error) (*image.CheckResult, error) {
		if !errors.Is(err, blockdev.ErrCorrupt) && !errors.Is(err, ErrNotVMDK) && !errors.Is(err, ErrExtentPath) {
			return nil, err
		}
		r.Corruptions++
		r.Messages = append(r.Messages, err.Error())
		return r, nil
	}
	img, err := Open(path, image.OpenOptions{ReadOnly: true, NoBacking: true, NoLock: true})
	if err != nil {
		return corrupt(err)
	}
	defer img.Close()
	for _, e := range img.extents {
		s := e.sp
		if s == nil {
			continue
		}
		grains := (e.sectors*sectorSize + s.grainBytes - 1) / s.grainBytes
		r.TotalClusters += grains
		s.mu.Lock()
		for g := int64(0); g < grains; g++ {
			if g%s.h.gtes == 0 && len(s.gts) >= maxCachedGTs/2 {
				clear(s.gts)
			}
			st, _, err := s.lookup(g)
			if err != nil {
				s.mu.Unlock()
				return corrupt(fmt.Errorf("%w (in %s)", err, path))
			}
			if st == grainData || st == grainCompressed {
				r.AllocatedClusters++
				if st == grainCompressed {
					r.CompressedClusters++
				}
			}
		}
		s.mu.Unlock()
		if st, err := s.f.Stat(); err == nil {
			r.ImageEndOffset = max(r.ImageEndOffset, st.Size())
		}
	}
	return r, nil
}
