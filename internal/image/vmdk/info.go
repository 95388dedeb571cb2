package vmdk

import (
	"errors"
	"fmt"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
	"vdisk/internal/image/blockmap"
)

// info reads the facts `vdisk info` shows from the VMDK in f (the
// registry's InfoFile), from its descriptor and header only: no extent
// file it names is opened, so DiskSize is f's alone and ClusterSize is
// known only for a single sparse file. Facts has no subformat field:
// CreateType on an open Image gives it.
func info(f image.File) (*image.Facts, error) {
	d, self, _, _, err := readDescriptor(f)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, f.Name())
	}
	fa := &image.Facts{Filename: f.Name(), Format: Name, BackingFile: d.parentHint, DiskSize: image.DiskSize(f)}
	if d.parentHint != "" {
		fa.BackingFormat = Name
	}
	for _, l := range d.extents {
		fa.VirtualSize += l.sectors * sectorSize
	}
	if self != nil {
		fa.ClusterSize = self.grain * sectorSize
	}
	return fa, nil
}

// check opens the VMDK in f (without its parent; the extents it names
// through image.LocalNames, as CheckOptions carry no policy) and reads
// every grain table, verifying the header, the descriptor and every
// grain directory and table entry (the registry's CheckFile). A problem
// is counted as a corruption and named in Messages; vmdk has nothing to
// repair.
func check(f image.File, opt image.CheckOptions) (*image.CheckResult, error) {
	r := &image.CheckResult{Filename: f.Name(), Format: Name}
	corrupt := func(err error) (*image.CheckResult, error) {
		if !errors.Is(err, blockdev.ErrCorrupt) && !errors.Is(err, ErrNotVMDK) {
			return nil, err
		}
		r.Corruptions++
		r.Messages = append(r.Messages, err.Error())
		return r, nil
	}
	img, err := open(f, image.OpenOptions{ReadOnly: true, NoBacking: true, Names: image.LocalNames{NoLock: true}})
	if err != nil {
		return corrupt(err)
	}
	defer img.release()
	for _, e := range img.extents {
		s := e.sp
		if s == nil {
			continue
		}
		grains := (e.sectors*sectorSize + s.grainBytes - 1) / s.grainBytes
		r.TotalClusters += grains
		if n, err := s.f.Size(); err == nil {
			r.ImageEndOffset = max(r.ImageEndOffset, n)
		}
		if err := s.count(e.m, grains, r); err != nil {
			return corrupt(fmt.Errorf("%w (in %s)", err, f.Name()))
		}
	}
	return r, nil
}

// count adds the allocated and compressed grains among the first grains
// of the extent to r, reading every grain table the directory has.
func (s *sparse) count(m *blockmap.Map, grains int64, r *image.CheckResult) error {
	for g := int64(0); g < grains; g += s.h.gtes {
		if s.gd[g/s.h.gtes] == 0 {
			continue
		}
		for j := g; j < min(grains, g+s.h.gtes); j++ {
			e, err := m.Lookup(j)
			if err != nil {
				return err
			}
			if e.State == blockmap.Data {
				r.AllocatedClusters++
				if s.compressed {
					r.CompressedClusters++
				}
			}
		}
	}
	return nil
}
