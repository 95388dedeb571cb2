package imageops

import (
	"fmt"
	"maps"
	"math/bits"
	"slices"
	"strconv"
	"strings"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// Measurement is what an image of a format needs on disk, as qemu-img
// measure reports it.
type Measurement struct {
	// Required is the size of a new image holding the source's data (or,
	// without a source, an empty one).
	Required int64 `json:"required"`
	// FullyAllocated is the size with every cluster of the disk allocated.
	FullyAllocated int64 `json:"fully-allocated"`
	// Bitmaps is the size of the source's persistent bitmaps, reported
	// (HasBitmaps) when both the source and the target format could hold
	// them: qcow2 v3 from a qcow2 source, as qemu-img does.
	Bitmaps    int64 `json:"bitmaps"`
	HasBitmaps bool  `json:"-"`
}

// MeasureOptions say what to measure.
type MeasureOptions struct {
	// Format is the target format (raw when "").
	Format string
	// Options are the target's creation options (qcow2: cluster_size,
	// refcount_bits, extended_l2, compat, preallocation, backing_file).
	Options map[string]string
	// Size is the disk size without a source.
	Size int64
	// Empty makes an empty image of a format, size and options and says
	// the size of its file and of its disk (stack.EmptyImage): the fixed
	// part of the layout of the formats qemu-img cannot measure (vdi,
	// vhd, vhdx, vmdk), to which measure adds the blocks.
	Empty func(format string, size int64, opts map[string]string) (fileSize, diskSize int64, err error)
}

// Measure says how large an image of o.Format would be that holds src's
// disk (src nil: an empty disk of o.Size bytes). srcQcow2 says src is a
// qcow2 image (whose persistent bitmaps a qcow2 v3 target could carry).
func Measure(src blockdev.Device, srcQcow2 bool, o MeasureOptions) (Measurement, error) {
	f := o.Format
	if f == "" {
		f = image.Raw
	}
	if fm, err := image.Lookup(f); err == nil {
		f = fm.Name
	}
	opts := map[string]string{}
	for k, v := range o.Options {
		opts[k] = v
	}
	var m Measurement
	var err error
	switch f {
	case image.Raw:
		m, err = measureRaw(src, opts, o.Size)
	case "qcow2":
		m, err = measureQcow2(src, srcQcow2, opts, o.Size)
	case "vdi", "vhd", "vhdx", "vmdk":
		if o.Empty == nil {
			return m, fmt.Errorf("measure: %s: no way to lay out an empty image", f)
		}
		m, err = measureBlocks(src, f, opts, o.Size, o.Empty)
		clear(opts)
	default:
		return m, fmt.Errorf("measure: %s: not a format vdisk measures (qcow2, raw, vdi, vhd, vhdx and vmdk are)", f)
	}
	if err != nil {
		return m, err
	}
	if len(opts) > 0 {
		keys := slices.Sorted(maps.Keys(opts))
		return m, fmt.Errorf("measure: %s: unknown or unsupported option %q", f, keys[0])
	}
	return m, nil
}

// measureRaw is qemu's raw_measure: the disk's size, rounded up to a
// sector without a source.
func measureRaw(src blockdev.Device, opts map[string]string, size int64) (Measurement, error) {
	delete(opts, "preallocation")
	n := roundUp(size, 512)
	if src != nil {
		n = src.Size()
	}
	return Measurement{Required: n, FullyAllocated: n}, nil
}

// measureBlocks measures the formats that store a disk as a header and a
// table (the empty image) followed by whole blocks, each allocated on
// the first write into it: vdi (1 MiB blocks), dynamic vhd (2 MiB
// blocks, each after its 512-byte sector bitmap), vhdx (32 MiB blocks)
// and monolithicSparse vmdk (64 KiB grains; its grain tables are all made
// with the image). Required counts the
// blocks the source's block status says hold data; a static vdi or a
// fixed vhd is all allocated when made.
func measureBlocks(src blockdev.Device, format string, opts map[string]string, size int64, empty func(string, int64, map[string]string) (int64, int64, error)) (Measurement, error) {
	var m Measurement
	if src != nil {
		size = src.Size()
	}
	fileSize, diskSize, err := empty(format, size, opts)
	if err != nil {
		return m, fmt.Errorf("measure: %w", err)
	}
	var bs, perBlock int64
	switch {
	case format == "vdi" && (opts["static"] == "on" || opts["static"] == "true" || opts["subformat"] == "static"),
		format == "vhd" && opts["subformat"] == "fixed",
		format == "vhdx" && opts["subformat"] == "fixed":
		return Measurement{Required: fileSize, FullyAllocated: fileSize}, nil
	case format == "vdi":
		bs, perBlock = 1<<20, 1<<20
	case format == "vhdx":
		bs, perBlock = 32<<20, 32<<20
	case format == "vmdk":
		if sf := opts["subformat"]; sf != "" && sf != "monolithicSparse" {
			return m, fmt.Errorf("measure: vmdk: subformat %s: only monolithicSparse is measured", sf)
		}
		bs, perBlock = 64<<10, 64<<10
	default:
		bs = 2 << 20
		perBlock = bs + roundUp(bs/512/8, 512)
	}
	blocks := divRoundUp(diskSize, bs)
	m.FullyAllocated = fileSize + blocks*perBlock
	m.Required = fileSize
	if src == nil {
		return m, nil
	}
	ssize := src.Size()
	for blk := int64(0); blk*bs < ssize; blk++ {
		end := min((blk+1)*bs, ssize)
		for off := blk * bs; off < end; {
			e, err := image.StatusAt(src, off, end-off)
			if err != nil {
				return m, fmt.Errorf("measure: block status at %d: %w", off, err)
			}
			if !e.Zero && e.Present && e.Data {
				m.Required += perBlock
				break
			}
			off += e.Length
		}
	}
	return m, nil
}

// qcow2 options and their defaults, as qemu's qcow2 driver has them.
const (
	qcow2DefaultCluster = 64 << 10
	qcow2MinCluster     = 512
	qcow2MaxCluster     = 2 << 20
	qcow2MaxL1Size      = 32 << 20
)

func measureQcow2(src blockdev.Device, srcQcow2 bool, opts map[string]string, size int64) (Measurement, error) {
	var m Measurement
	take := func(k string) (string, bool) {
		v, ok := opts[k]
		delete(opts, k)
		return v, ok
	}
	extL2 := false
	if v, ok := take("extended_l2"); ok {
		b, err := parseOnOff(v)
		if err != nil {
			return m, fmt.Errorf("measure: extended_l2: %w", err)
		}
		extL2 = b
	}
	cs := int64(qcow2DefaultCluster)
	if v, ok := take("cluster_size"); ok {
		n, err := ParseSize(v)
		if err != nil || n < qcow2MinCluster || n > qcow2MaxCluster || n&(n-1) != 0 {
			return m, fmt.Errorf("measure: Cluster size must be a power of two between %d and %dk", qcow2MinCluster, qcow2MaxCluster>>10)
		}
		cs = n
	}
	if extL2 && cs < 16<<10 {
		return m, fmt.Errorf("measure: Extended L2 entries are only supported with cluster sizes of at least 16384 bytes")
	}
	version := 3
	if v, ok := take("compat"); ok {
		switch v {
		case "0.10", "v2":
			version = 2
		case "1.1", "v3":
		default:
			return m, fmt.Errorf("measure: Invalid compatibility level: '%s'", v)
		}
	}
	refBits := int64(16)
	if v, ok := take("refcount_bits"); ok {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 || n > 64 || n&(n-1) != 0 {
			return m, fmt.Errorf("measure: Refcount width must be a power of two and may not exceed 64 bits")
		}
		if version < 3 && n != 16 {
			return m, fmt.Errorf("measure: Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)")
		}
		refBits = n
	}
	if version < 3 && extL2 {
		return m, fmt.Errorf("measure: Extended L2 entries are only supported with compatibility level 1.1 and above (use compat=1.1 or greater)")
	}
	prealloc := "off"
	if v, ok := take("preallocation"); ok {
		switch v {
		case "off", "metadata", "falloc", "full":
			prealloc = v
		default:
			return m, fmt.Errorf("measure: Invalid preallocation mode: '%s'", v)
		}
	}
	backing, hasBacking := take("backing_file")
	take("backing_fmt")
	if hasBacking && backing != "" && prealloc != "off" {
		return m, fmt.Errorf("measure: Backing file and preallocation can only be used at the same time if extended_l2 is on")
	}
	take("lazy_refcounts")

	l2e := int64(8)
	if extL2 {
		l2e = 16
	}
	virtual := roundUp(size, cs)
	l2Tables := divRoundUp(virtual/cs, cs/l2e)
	if l2Tables*8 > qcow2MaxL1Size {
		return m, fmt.Errorf("measure: The image size is too large (try using a larger cluster size)")
	}
	var required int64
	if src != nil {
		ssize := src.Size()
		virtual = roundUp(ssize, cs)
		if hasBacking && backing != "" {
			// The new image's backing file may share nothing with the
			// source: every cluster may need writing.
			required = virtual
		} else {
			for off := int64(0); off < ssize; {
				e, err := image.StatusAt(src, off, ssize-off)
				if err != nil {
					return m, fmt.Errorf("measure: block status at %d: %w", off, err)
				}
				n := e.Length
				if !e.Zero && e.Present && e.Data {
					// Whole clusters: from the one the run starts in to
					// the end of the one it ends in.
					n = roundUp(off+n, cs) - off
					required += off%cs + n
				}
				off += n
			}
		}
	}
	if prealloc == "full" || prealloc == "falloc" {
		required = virtual
	}
	m.FullyAllocated = qcow2PreallocSize(virtual, cs, int64(bits.TrailingZeros64(uint64(refBits))), extL2)
	m.Required = m.FullyAllocated - virtual + required
	m.HasBitmaps = version >= 3 && src != nil && srcQcow2
	return m, nil
}

// qcow2PreallocSize is the size of a qcow2 image of size bytes with every
// cluster allocated: the header cluster, L2 tables for every cluster, the
// L1 table, and the refcount structures that count them all (qemu's
// qcow2_calc_prealloc_size).
func qcow2PreallocSize(size, cs, refOrder int64, extL2 bool) int64 {
	l2e := int64(8)
	if extL2 {
		l2e = 16
	}
	total := roundUp(size, cs)
	meta := cs // header
	nl2e := roundUp(total/cs, cs/l2e)
	meta += nl2e * l2e
	nl1e := roundUp(nl2e*l2e/cs, cs/8)
	meta += nl1e * 8
	meta += qcow2RefcountMetaSize((meta+total)/cs, cs, refOrder)
	return meta + total
}

// qcow2RefcountMetaSize is the size of the refcount table and blocks that
// count clusters clusters and themselves: the fixed point where they need
// no more of either.
func qcow2RefcountMetaSize(clusters, cs, refOrder int64) int64 {
	perTable := cs / 8
	perBlock := cs * 8 / (1 << refOrder)
	var table, blocks, n int64
	for {
		last := n
		blocks = divRoundUp(clusters+table+blocks, perBlock)
		table = divRoundUp(blocks, perTable)
		n = clusters + blocks + table
		if n == last {
			break
		}
	}
	return (blocks + table) * cs
}

func roundUp(n, to int64) int64 { return divRoundUp(n, to) * to }

func divRoundUp(n, d int64) int64 { return (n + d - 1) / d }

// parseOnOff parses a qemu boolean option value.
func parseOnOff(v string) (bool, error) {
	switch strings.ToLower(v) {
	case "on", "yes", "true", "y":
		return true, nil
	case "off", "no", "false", "n":
		return false, nil
	}
	return false, fmt.Errorf("%q: want on or off", v)
}

// ParseSize parses a byte count as qemu-img does: a number with an
// optional suffix k, M, G, T, P or E (powers of 1024, any case) or b
// (bytes).
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, fmt.Errorf("invalid size %q", s)
	}
	mul := int64(1)
	switch t[len(t)-1] {
	case 'b', 'B':
		t = t[:len(t)-1]
	case 'k', 'K':
		mul = 1 << 10
	case 'm', 'M':
		mul = 1 << 20
	case 'g', 'G':
		mul = 1 << 30
	case 't', 'T':
		mul = 1 << 40
	case 'p', 'P':
		mul = 1 << 50
	case 'e', 'E':
		mul = 1 << 60
	}
	if mul != 1 {
		t = t[:len(t)-1]
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("invalid size %q", s)
	}
	if n > (1<<63-1)/mul {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return n * mul, nil
}
