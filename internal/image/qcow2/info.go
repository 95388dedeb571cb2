package qcow2

import (
	"fmt"
	"os"

	"vdisk/internal/image"
)

// Info reads the facts `vdisk info` shows from the image at path, without
// opening its backing chain. It also describes images Open refuses
// (encrypted, external data file).
func Info(path string) (*image.Facts, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("qcow2: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("qcow2: %w", err)
	}
	fsize := st.Size()
	h, err := readHeader(f, fsize)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, path)
	}
	snaps, err := readSnapshots(f, h, fsize)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, path)
	}
	return facts(path, h, snaps), nil
}

func facts(path string, h *header, snaps []snapshot) *image.Facts {
	fa := &image.Facts{
		Filename:      path,
		Format:        "qcow2",
		VirtualSize:   int64(h.size),
		DiskSize:      statDiskSize(path),
		ClusterSize:   h.clusterSize(),
		BackingFile:   h.backingFile,
		BackingFormat: h.backingFormat,
		Dirty:         h.incompat&incDirty != 0,
		Corrupt:       h.incompat&incCorrupt != 0,
		Compat:        "0.10",
		RefcountBits:  h.refcountBits(),
		LazyRefcounts: h.compat&compatLazyRefcounts != 0,
		ExtendedL2:    h.extL2(),
		Encrypted:     h.cryptMethod != 0,
		DataFile:      h.dataFile,
	}
	if h.version >= 3 {
		fa.Compat = "1.1"
		fa.CompressionType = "zlib"
		if h.compression == compressZstd {
			fa.CompressionType = "zstd"
		}
	}
	for _, s := range snaps {
		fa.Snapshots = append(fa.Snapshots, s.info)
	}
	return fa
}

// Facts describes the open image (the same facts Info reads from a file).
func (img *Image) Facts() *image.Facts {
	img.mu.Lock()
	h, end := *img.h, img.fileEnd
	img.mu.Unlock()
	snaps, _ := readSnapshots(img.f, &h, end)
	return facts(img.path, &h, snaps)
}
