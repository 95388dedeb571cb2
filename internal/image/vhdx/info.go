package vhdx

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// Info reads the facts `vdisk info` shows from the VHDX at path, without
// opening its parent. An image with a dirty log is described (Dirty set)
// without replaying it.
func Info(path string) (*image.Facts, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("vhdx: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("vhdx: %w", err)
	}
	hs, cur, err := readHeaders(f, st.Size())
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, path)
	}
	_, metaReg, err := readRegions(f, st.Size())
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, path)
	}
	m, err := readMetadata(f, metaReg)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, path)
	}
	fa := &image.Facts{Filename: path, Format: Name, VirtualSize: m.size, ClusterSize: m.blockSize,
		Dirty: hs[cur].logGUID != (guid{}), DiskSize: st.Size()}
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		fa.DiskSize = s.Blocks * 512
	}
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

// Check verifies the headers, region table, metadata and BAT of the VHDX
// at path (read-only: a dirty log is reported, not replayed). A problem is
// counted as a corruption and named in Messages.
func Check(path string, opt image.CheckOptions) (*image.CheckResult, error) {
	r := &image.CheckResult{Filename: path, Format: Name}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("vhdx: %w", err)
	}
	defer f.Close()
	img, err := load(f, true)
	if err != nil {
		if !errors.Is(err, blockdev.ErrCorrupt) && !errors.Is(err, ErrNotVHDX) && !errors.Is(err, ErrDirtyLog) {
			return nil, err
		}
		r.Corruptions++
		r.Messages = append(r.Messages, err.Error())
		return r, nil
	}
	for i, e := range img.bat {
		if img.isBitmap(int64(i)) {
			continue
		}
		r.TotalClusters++
		if st := e & 7; st == stateFullPresent || st == statePartPresent {
			r.AllocatedClusters++
		}
	}
	r.ImageEndOffset = img.fileEnd
	return r, nil
}
