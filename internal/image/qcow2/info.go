package qcow2

import (
	"fmt"

	"vdisk/internal/image"
)

// InfoFile reads the facts `vdisk info` shows from the image in f,
// without opening its backing chain. It also describes images OpenFile
// refuses (encrypted, external data file).
func InfoFile(f image.File) (*image.Facts, error) {
	h, fsize, err := readHeader(f)
	var snaps []snapshot
	if err == nil {
		snaps, err = readSnapshots(f, h, fsize)
	}
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, f.Name())
	}
	return facts(f, h, snaps), nil
}

func facts(f image.File, h *header, snaps []snapshot) *image.Facts {
	fa := &image.Facts{
		Filename:      f.Name(),
		Format:        "qcow2",
		VirtualSize:   int64(h.size),
		DiskSize:      image.DiskSize(f),
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

// Facts describes the open image (the same facts InfoFile reads from a file).
func (img *Image) Facts() *image.Facts {
	img.mu.Lock()
	h, end := *img.h, img.fileEnd
	img.mu.Unlock()
	snaps, _ := readSnapshots(img.f, &h, end)
	return facts(img.f, &h, snaps)
}
