package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"strconv"
	"strings"

	"vdisk/internal/image"
)

// Create defaults.
const (
	DefaultClusterSize   = 64 << 10
	defaultExtL2Cluster  = 32 << 10
	defaultRefcountOrder = 4
)

// createParams is CreateOptions decoded for qcow2.
type createParams struct {
	size          uint64
	clusterBits   uint32
	version       uint32
	refcountOrder uint32
	lazy, extL2   bool
	compression   uint8
	backing       string
	backingFormat string
}

func parseCreate(f image.File, opt image.CreateOptions) (*createParams, error) {
	p := &createParams{version: 3, refcountOrder: defaultRefcountOrder, backing: opt.BackingFile, backingFormat: opt.BackingFormat}
	for k, v := range opt.Options {
		switch k {
		case "compat":
			switch v {
			case "0.10", "v2":
				p.version = 2
			case "1.1", "v3":
			default:
				return nil, fmt.Errorf("qcow2: compat %q: want 0.10 or 1.1", v)
			}
		case "refcount_bits":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 64 || n&(n-1) != 0 {
				return nil, fmt.Errorf("qcow2: refcount_bits %q: want a power of two from 1 to 64", v)
			}
			p.refcountOrder = uint32(bits.TrailingZeros(uint(n)))
		case "lazy_refcounts":
			p.lazy = v == "on"
		case "extended_l2":
			p.extL2 = v == "on"
		case "cluster_size": // qemu-img's -o spelling of --cluster-size
			n, err := parseBytes(v)
			if err != nil {
				return nil, fmt.Errorf("qcow2: cluster_size %q: %v", v, err)
			}
			if opt.ClusterSize != 0 && opt.ClusterSize != n {
				return nil, fmt.Errorf("qcow2: cluster_size %q and a cluster size of %d disagree", v, opt.ClusterSize)
			}
			opt.ClusterSize = n
		case "compression_type":
			switch v {
			case "zlib":
				p.compression = compressZlib
			case "zstd":
				p.compression = compressZstd
			default:
				return nil, fmt.Errorf("qcow2: compression_type %q: want zlib or zstd", v)
			}
		default:
			return nil, fmt.Errorf("qcow2: unknown option %q", k)
		}
	}
	if p.version == 2 && (p.lazy || p.extL2 || p.refcountOrder != defaultRefcountOrder || p.compression != compressZlib) {
		return nil, fmt.Errorf("qcow2: lazy_refcounts, extended_l2, refcount_bits and compression_type=zstd need compat=1.1")
	}
	cs := opt.ClusterSize
	if cs == 0 {
		cs = DefaultClusterSize
		if p.extL2 {
			cs = defaultExtL2Cluster
		}
	}
	if cs&(cs-1) != 0 || cs < 1<<minClusterBits || cs > 1<<maxClusterBits {
		return nil, fmt.Errorf("qcow2: cluster size %d: want a power of two from 512 to 2M", cs)
	}
	p.clusterBits = uint32(bits.TrailingZeros64(uint64(cs)))
	if p.extL2 && p.clusterBits < minExtL2Bits {
		return nil, fmt.Errorf("qcow2: extended_l2 needs a cluster size of at least 16K")
	}
	if len(p.backing) > maxBackingName {
		return nil, fmt.Errorf("qcow2: backing file name longer than %d bytes", maxBackingName)
	}
	size := opt.Size
	if p.backing != "" {
		if err := p.learnBacking(f, opt.Names, &size); err != nil {
			return nil, err
		}
	}
	p.size = uint64(size)
	return p, nil
}

// learnBacking opens the backing file p.backing, which f names, through
// names (nil: image.LocalNames) to learn its format, when none was given,
// and its size, when *size is zero. A backing file whose format is not
// given must be a structured image: vdisk never records raw by probing.
func (p *createParams) learnBacking(f image.File, names image.Names, size *int64) error {
	if names == nil {
		names = image.LocalNames{}
	}
	bf, err := names.Open(f, p.backing, true)
	if err != nil {
		return fmt.Errorf("qcow2: backing file: %w", err)
	}
	defer bf.Close()
	if p.backingFormat == "" {
		if p.backingFormat, err = image.ProbeFile(bf); err != nil {
			return fmt.Errorf("qcow2: backing file: %w", err)
		}
		if p.backingFormat == image.Raw {
			return fmt.Errorf("qcow2: backing file %q is not a structured image and vdisk does not guess raw: give its format with -F (-F raw for a raw disk): %w",
				p.backing, image.ErrBackingRefused)
		}
	}
	if *size != 0 {
		return nil
	}
	if p.backingFormat == image.Raw {
		*size, err = bf.Size()
		return err
	}
	fa, err := image.InfoOf(bf, p.backingFormat)
	if err != nil {
		return fmt.Errorf("qcow2: backing file: %w", err)
	}
	*size = fa.VirtualSize
	return nil
}

// CreateFile writes a new, empty qcow2 image into f, an empty file, and
// syncs it. opt.Options may set compat (0.10 or 1.1), refcount_bits,
// lazy_refcounts and extended_l2 (on/off) and compression_type (zlib or
// zstd, for the clusters convert -c writes). A backing file is opened
// through opt.Names (see learnBacking); with no size, its size is used.
// The backing file's name is recorded as given.
func CreateFile(f image.File, opt image.CreateOptions) error {
	if err := opt.Validate(); err != nil {
		return err
	}
	p, err := parseCreate(f, opt)
	if err != nil {
		return err
	}
	buf, err := layout(p)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(buf, 0); err != nil {
		return fmt.Errorf("qcow2: create %s: %w", f.Name(), err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("qcow2: create %s: %w", f.Name(), err)
	}
	return nil
}

// layout returns the bytes of a new image: header, refcount table,
// refcount blocks and an empty L1 table, every cluster counted once.
func layout(p *createParams) ([]byte, error) {
	h := &header{version: p.version, clusterBits: p.clusterBits, size: p.size, refcountOrder: p.refcountOrder}
	if p.extL2 {
		h.incompat |= incExtL2
	}
	if p.lazy {
		h.compat |= compatLazyRefcounts
	}
	if p.compression != compressZlib {
		h.incompat |= incCompression
		h.compression = p.compression
	}
	cs := int64(h.clusterSize())
	l1n := int64(h.l1Needed())
	if l1n*8 > maxL1Bytes {
		return nil, fmt.Errorf("qcow2: size %d needs an L1 table above %d bytes; use larger clusters", p.size, maxL1Bytes)
	}
	l1c := (l1n*8 + cs - 1) / cs
	E := cs * 8 / int64(h.refcountBits())
	tc, rb := int64(1), int64(1)
	for {
		n := 1 + tc + rb + l1c
		nrb := (n + E - 1) / E
		ntc := (nrb*8 + cs - 1) / cs
		if nrb == rb && ntc == tc {
			break
		}
		rb, tc = max(nrb, rb), max(ntc, tc)
	}
	total := 1 + tc + rb + l1c
	if total*cs > 1<<36 {
		return nil, errors.New("qcow2: metadata of the new image would exceed 64 GiB")
	}
	h.refTableOff, h.refTableClusters = uint64(cs), uint32(tc)
	h.l1Off, h.l1Size = uint64((1+tc+rb)*cs), uint32(l1n)
	buf := make([]byte, total*cs)
	for i := range rb {
		binary.BigEndian.PutUint64(buf[cs+i*8:], uint64((1+tc+i)*cs))
	}
	for c := range total {
		blk := buf[(1+tc+c/E)*cs:]
		putRef(blk, c%E, h.refcountBits(), 1)
	}
	if err := encodeHeader(buf[:cs], h, p.backing, p.backingFormat); err != nil {
		return nil, err
	}
	return buf, nil
}

// featureTable is the feature-name table vdisk writes into new images.
var featureTable = []featureName{
	{0, 0, "dirty bit"}, {0, 1, "corrupt bit"}, {0, 2, "external data file"},
	{0, 3, "compression type"}, {0, 4, "extended L2 entries"},
	{1, 0, "lazy refcounts"}, {2, 0, "bitmaps"}, {2, 1, "raw external data"},
}

// encodeHeader writes h, its extensions and the backing file name into
// the first cluster c.
func encodeHeader(c []byte, h *header, backing, backingFmt string) error {
	be := binary.BigEndian
	be.PutUint32(c, magic)
	be.PutUint32(c[4:], h.version)
	be.PutUint32(c[20:], h.clusterBits)
	be.PutUint64(c[24:], h.size)
	be.PutUint32(c[36:], h.l1Size)
	be.PutUint64(c[40:], h.l1Off)
	be.PutUint64(c[48:], h.refTableOff)
	be.PutUint32(c[56:], h.refTableClusters)
	pos := v2HeaderLen
	if h.version >= 3 {
		be.PutUint64(c[72:], h.incompat)
		be.PutUint64(c[80:], h.compat)
		be.PutUint64(c[88:], h.autoclear)
		be.PutUint32(c[96:], h.refcountOrder)
		be.PutUint32(c[100:], 112)
		c[104] = h.compression
		pos = 112 // header with the compression_type byte, padded
	}
	ext := func(typ uint32, data []byte) error {
		need := 8 + (len(data)+7)&^7
		if pos+need+8 > len(c) {
			return fmt.Errorf("qcow2: header extensions do not fit in a %d-byte cluster", len(c))
		}
		be.PutUint32(c[pos:], typ)
		be.PutUint32(c[pos+4:], uint32(len(data)))
		copy(c[pos+8:], data)
		pos += need
		return nil
	}
	if backing != "" && backingFmt != "" {
		if err := ext(extBackingFmt, []byte(backingFmt)); err != nil {
			return err
		}
	}
	if h.version >= 3 && len(c) >= 4096 {
		var ft []byte
		for _, f := range featureTable {
			e := make([]byte, 48)
			e[0], e[1] = f.kind, f.bit
			copy(e[2:], f.name)
			ft = append(ft, e...)
		}
		if err := ext(extFeatureNames, ft); err != nil {
			return err
		}
	}
	pos += 8 // end of extensions (zero type and length)
	if backing != "" {
		if pos+len(backing) > len(c) {
			return fmt.Errorf("qcow2: backing file name does not fit in the first cluster")
		}
		be.PutUint64(c[8:], uint64(pos))
		be.PutUint32(c[16:], uint32(len(backing)))
		copy(c[pos:], backing)
	}
	return nil
}

// parseBytes reads a byte count as qemu-img writes one: a number with an
// optional k, M or G suffix (binary).
func parseBytes(s string) (int64, error) {
	mul := int64(1)
	switch {
	case strings.HasSuffix(s, "k"), strings.HasSuffix(s, "K"):
		mul, s = 1<<10, s[:len(s)-1]
	case strings.HasSuffix(s, "M"):
		mul, s = 1<<20, s[:len(s)-1]
	case strings.HasSuffix(s, "G"):
		mul, s = 1<<30, s[:len(s)-1]
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n > 1<<30/mul {
		return 0, fmt.Errorf("want a size such as 65536 or 64k")
	}
	return n * mul, nil
}
