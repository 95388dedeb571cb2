package vhdx

import (
	"errors"
	"fmt"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// info reads the facts `vdisk info` shows from the VHDX in f, without
// opening its parent (the registry's InfoFile). An image with a dirty log
// is described (Dirty set) without replaying it.
func info(f image.File) (*image.Facts, error) {
	fsize, err := f.Size()
	if err != nil {
		return nil, fmt.Errorf("vhdx: %w", err)
	}
	id := make([]byte, 8)
	if _, err := f.ReadAt(id, 0); err != nil || !probe(id) {
		return nil, fmt.Errorf("%w (in %s)", ErrNotVHDX, f.Name())
	}
	hs, cur, err := readHeaders(f, fsize)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, f.Name())
	}
	_, metaReg, err := readRegions(f, fsize)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, f.Name())
	}
	m, err := readMetadata(f, metaReg)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, f.Name())
	}
	fa := &image.Facts{Filename: f.Name(), Format: Name, VirtualSize: m.size, ClusterSize: m.blockSize,
		Dirty: hs[cur].logGUID != (guid{}), DiskSize: image.DiskSize(f)}
	if m.hasParent {
		fa.BackingFormat = Name
		for _, k := range []string{"relative_path", "absolute_win32_path", "volume_path"} {
			if v := m.parent[k]; v != "" {
				fa.BackingFile = v
				break
			}
		}
	}
	return fa, nil
}

// check verifies the headers, region table, metadata and BAT of the VHDX
// in f (the registry's CheckFile; read-only: a dirty log is reported, not
// replayed). A problem is counted as a corruption and named in Messages.
func check(f image.File, opt image.CheckOptions) (*image.CheckResult, error) {
	r := &image.CheckResult{Filename: f.Name(), Format: Name}
	img, bat, err := load(f, true)
	if err == nil {
		err = img.serve(bat, true, nil)
	}
	if err != nil {
		if !errors.Is(err, blockdev.ErrCorrupt) && !errors.Is(err, ErrNotVHDX) && !errors.Is(err, ErrDirtyLog) {
			return nil, err
		}
		r.Corruptions++
		r.Messages = append(r.Messages, err.Error())
		return r, nil
	}
	r.TotalClusters, r.AllocatedClusters = img.payloadEntries(), img.AllocatedBlocks()
	r.ImageEndOffset = img.End()
	return r, nil
}
