package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"vdisk/internal/image"
)

// maxCheckClusters bounds the host clusters CheckFile counts references for
// (one 32-bit counter each: 256 MiB; 4 TiB of file at 64 KiB clusters).
const maxCheckClusters = 1 << 26

// checker holds the state of one CheckFile.
type checker struct {
	f        image.File
	h        *header
	cs       int64
	fileSize int64
	refs     []uint32 // computed references per host cluster
	res      *image.CheckResult
	// uses counts the references to each L2 table from every L1 table;
	// l2s lists the tables in the order first met (the active L1's
	// first), so each is read once however often it is referenced.
	uses     map[int64]*l2use
	l2s      []int64
	lastHost int64 // the active walk's last data cluster (fragmentation)
}

// l2use is how often L1 tables reference an L2 table, and the L1 index
// that first did (for messages).
type l2use struct {
	n     uint32
	index int64
}

func (c *checker) corrupt(format string, a ...any) {
	c.res.Corruptions++
	c.res.Messages = append(c.res.Messages, "ERROR "+fmt.Sprintf(format, a...))
}

// ref counts a reference to every cluster of [off, off+n).
func (c *checker) ref(what string, off, n int64) { c.refN(what, off, n, 1) }

// refN counts k references to every cluster of [off, off+n).
func (c *checker) refN(what string, off, n int64, k uint32) {
	if n <= 0 {
		return
	}
	// A cluster may end past the end of the file (qemu writes only the
	// subclusters it needs), but it must start inside it.
	if off < 0 || off >= c.fileSize || n > int64(len(c.refs))*c.cs-off {
		c.corrupt("%s at %#x+%d is past the end of the file", what, off, n)
		return
	}
	for cl := off / c.cs; cl <= (off+n-1)/c.cs; cl++ {
		if cl >= int64(len(c.refs)) {
			c.corrupt("%s at %#x is past the end of the file", what, cl*c.cs)
			return
		}
		c.refs[cl] = max(c.refs[cl], c.refs[cl]+k) // saturating
	}
}

// read reads n bytes at off, or reports why it cannot.
func (c *checker) read(what string, off, n int64) []byte {
	if off < 0 || n < 0 || off+n > c.fileSize {
		c.res.CheckErrors++
		c.res.Messages = append(c.res.Messages, fmt.Sprintf("ERROR cannot read %s at %#x: past the end of the file", what, off))
		return nil
	}
	b := make([]byte, n)
	if _, err := c.f.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
		c.res.CheckErrors++
		c.res.Messages = append(c.res.Messages, fmt.Sprintf("ERROR cannot read %s at %#x: %v", what, off, err))
		return nil
	}
	return b
}

// CheckFile verifies the metadata of the qcow2 image in f the way
// `qemu-img check` does: every cluster's refcount must equal the number
// of references to it. A refcount that is too low is a corruption; one
// too high is a leak. With opt.RepairLeaks the leaked refcounts are
// lowered; with opt.RepairAll the refcounts are rebuilt. It does not
// close f.
func CheckFile(f image.File, opt image.CheckOptions) (*image.CheckResult, error) {
	if err := qemuLock(f, !opt.RepairLeaks && !opt.RepairAll, false); err != nil {
		return nil, fmt.Errorf("%w (checking %s)", err, f.Name())
	}
	h, fsize, err := readHeader(f)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, f.Name())
	}
	c, err := newChecker(f, h, fsize)
	if err != nil {
		return nil, err
	}
	damaged := c.res.Corruptions > 0 || c.res.CheckErrors > 0 // in the tables themselves
	stored, err := c.compare(opt.RepairLeaks && !opt.RepairAll)
	if err != nil {
		return nil, err
	}
	c.checkCopied(stored)
	if !opt.RepairAll || c.res.Corruptions+c.res.Leaks == 0 {
		return c.res, nil
	}
	if damaged {
		c.res.Messages = append(c.res.Messages, "The image's tables are damaged (not only refcounts and flags): it cannot be repaired")
		return c.res, nil
	}
	if err := repairAll(f, h, fsize); err != nil {
		return nil, fmt.Errorf("qcow2: repair %s: %w", f.Name(), err)
	}
	c.res.CorruptionsFixed, c.res.LeaksFixed = c.res.Corruptions, c.res.Leaks
	return c.res, nil
}

// keepOpen is a File whose Close leaves it open: the caller of
// CheckFile owns it.
type keepOpen struct{ image.File }

func (keepOpen) Close() error               { return nil }
func (k keepOpen) Punch(off, n int64) error { return image.Punch(k.File, off, n) }

// repairAll rebuilds the refcounts from the references, then sets the
// COPIED flags by them, as qemu-img check -r all does.
func repairAll(f image.File, h *header, fsize int64) error {
	if err := repairRefcounts(f, h, fsize); err != nil {
		return err
	}
	img, err := open(keepOpen{f}, image.OpenOptions{NoBacking: true})
	if err != nil {
		return err
	}
	img.mu.Lock()
	err = img.fixCopied()
	if err == nil {
		err = img.writeMetadata(true)
	}
	img.mu.Unlock()
	if cerr := img.Close(); err == nil {
		err = cerr
	}
	return err
}

// newChecker counts the references of the image in f.
func newChecker(f image.File, h *header, fsize int64) (*checker, error) {
	c := &checker{f: f, h: h, cs: h.clusterSize(), fileSize: fsize,
		res: &image.CheckResult{Filename: f.Name(), Format: "qcow2"}}
	n := (fsize + c.cs - 1) / c.cs
	if n > maxCheckClusters {
		return nil, fmt.Errorf("qcow2: check %s: %d clusters is more than %d", f.Name(), n, maxCheckClusters)
	}
	c.refs = make([]uint32, n)
	c.res.TotalClusters = int64((h.size + uint64(c.cs) - 1) / uint64(c.cs))
	c.walk()
	return c, nil
}

// walk counts every reference the image's metadata makes.
func (c *checker) walk() {
	h := c.h
	c.ref("header", 0, c.cs)
	c.ref("L1 table", int64(h.l1Off), int64(h.l1Size)*8)
	c.ref("refcount table", int64(h.refTableOff), int64(h.refTableClusters)*c.cs)
	snaps, err := readSnapshots(c.f, h, c.fileSize)
	if err != nil {
		c.corrupt("snapshot table: %v", err)
	}
	if h.nbSnapshots > 0 {
		end := 0
		for _, s := range snaps {
			end += (40 + len(s.info.ID) + len(s.info.Name) + extraLen(s) + 7) &^ 7
		}
		c.ref("snapshot table", int64(h.snapshotsOff), int64(end))
	}
	if h.cryptoOff != 0 {
		c.ref("encryption header", int64(h.cryptoOff), int64(h.cryptoLen))
	}
	if h.hasBitmaps {
		c.walkBitmaps()
	}
	c.uses = map[int64]*l2use{}
	c.walkL1("active L1 table", int64(h.l1Off), int64(h.l1Size))
	active := len(c.l2s)
	for _, s := range snaps {
		c.ref("snapshot L1 table", int64(s.l1Off), int64(s.l1Size)*8)
		c.walkL1("snapshot "+s.info.Name+" L1 table", int64(s.l1Off), int64(s.l1Size))
	}
	c.lastHost = -1
	for k, off := range c.l2s {
		c.walkL2(off, c.uses[off], k < active)
	}
	rt := c.read("refcount table", int64(h.refTableOff), int64(h.refTableClusters)*c.cs)
	for i := 0; i+8 <= len(rt); i += 8 {
		off := int64(binary.BigEndian.Uint64(rt[i:]))
		if off == 0 {
			continue
		}
		if off%c.cs != 0 {
			c.corrupt("refcount block %d at %#x is not cluster aligned", i/8, off)
			continue
		}
		c.ref("refcount block", off, c.cs)
	}
}

// extraLen recovers a snapshot entry's extra-data length for the table
// size (readSnapshots keeps only what it decoded).
func extraLen(s snapshot) int { return s.extra }

// walkL1 counts the references of an L1 table to L2 tables.
func (c *checker) walkL1(what string, off, n int64) {
	l1 := c.read(what, off, n*8)
	for i := int64(0); i < int64(len(l1))/8; i++ {
		l2off := int64(binary.BigEndian.Uint64(l1[i*8:]) & offsetMask)
		if l2off == 0 {
			continue
		}
		if l2off%c.cs != 0 {
			c.corrupt("%s entry %d: L2 table offset %#x unaligned", what, i, l2off)
			continue
		}
		c.ref("L2 table", l2off, c.cs)
		if u := c.uses[l2off]; u != nil {
			u.n++
			continue
		}
		c.uses[l2off] = &l2use{n: 1, index: i}
		c.l2s = append(c.l2s, l2off)
	}
}

// walkL2 counts the clusters the L2 table at off references, once for
// every reference to the table; active counts the active disk's
// allocated, compressed and fragmented clusters too.
func (c *checker) walkL2(off int64, u *l2use, active bool) {
	l2 := c.read("L2 table", off, c.cs)
	l2n := c.h.l2Entries()
	for j := int64(0); j < l2n && l2 != nil; j++ {
		var e, bm uint64
		if c.h.extL2() {
			e, bm = binary.BigEndian.Uint64(l2[j*16:]), binary.BigEndian.Uint64(l2[j*16+8:])
		} else {
			e = binary.BigEndian.Uint64(l2[j*8:])
		}
		vc := u.index*l2n + j
		if e&flagCompressed != 0 {
			coff, clen := compressedRange(c.h, e)
			c.refN("compressed cluster", coff, clen, u.n)
			if active {
				c.res.AllocatedClusters++
				c.res.CompressedClusters++
			}
			continue
		}
		host := int64(e & offsetMask)
		if c.h.extL2() && bm&(bm>>32)&0xffffffff != 0 {
			c.corrupt("guest cluster %d: subclusters both allocated and zero (bitmap %#x)", vc, bm)
		}
		if c.h.extL2() && bm&allSubclusters != 0 && host == 0 {
			c.corrupt("guest cluster %d: subclusters allocated without a host cluster", vc)
		}
		if host == 0 {
			continue
		}
		if host%c.cs != 0 {
			c.corrupt("guest cluster %d: host offset %#x unaligned", vc, host)
			continue
		}
		c.refN("data cluster", host, c.cs, u.n)
		if active && (c.h.version < 3 || e&flagZero == 0) {
			c.res.AllocatedClusters++
			if c.lastHost >= 0 && host != c.lastHost+c.cs {
				c.res.FragmentedClusters++
			}
			c.lastHost = host
		}
	}
}

// compressedRange is Image.compressed for a header.
func compressedRange(h *header, e uint64) (int64, int64) {
	x := 62 - (h.clusterBits - 8)
	off := int64(e & (1<<x - 1))
	sectors := int64(e>>x) & (1<<(h.clusterBits-8) - 1)
	return off, (sectors+1)*512 - off&511
}

// walkBitmaps counts the clusters of the persistent-bitmap extension.
func (c *checker) walkBitmaps() {
	h := c.h
	c.ref("bitmap directory", int64(h.bitmapDirOff), int64(h.bitmapDirSize))
	dir := c.read("bitmap directory", int64(h.bitmapDirOff), int64(h.bitmapDirSize))
	be := binary.BigEndian
	total := int64(0) // each bitmap table has clusters of its own
	for pos := 0; pos+24 <= len(dir); {
		tOff, tSize := int64(be.Uint64(dir[pos:])), int64(be.Uint32(dir[pos+8:]))
		nameLen, extra := int(be.Uint16(dir[pos+18:])), int(be.Uint32(dir[pos+20:]))
		if total += tSize * 8; total > c.fileSize {
			c.corrupt("bitmap tables of more than %d bytes in all in a file of %d bytes", total, c.fileSize)
			return
		}
		c.ref("bitmap table", tOff, tSize*8)
		if t := c.read("bitmap table", tOff, tSize*8); t != nil {
			for i := 0; i < len(t); i += 8 {
				if off := int64(be.Uint64(t[i:]) & offsetMask); off != 0 {
					c.ref("bitmap data", off, c.cs)
				}
			}
		}
		pos += (24 + nameLen + extra + 7) &^ 7
	}
}

// compare checks stored refcounts against the computed references and,
// with repair, lowers leaked ones. It returns the stored refcounts of the
// clusters inside the file.
func (c *checker) compare(repair bool) ([]uint64, error) {
	bits := c.h.refcountBits()
	E := c.cs * 8 / int64(bits)
	stored := make([]uint64, len(c.refs))
	rt := c.read("refcount table", int64(c.h.refTableOff), int64(c.h.refTableClusters)*c.cs)
	covered := int64(0)
	for i := int64(0); i < int64(len(rt))/8; i++ {
		off := int64(binary.BigEndian.Uint64(rt[i*8:]))
		covered = (i + 1) * E
		if off == 0 || off%c.cs != 0 {
			continue
		}
		blk := c.read("refcount block", off, c.cs)
		if blk == nil {
			continue
		}
		dirty := false
		for k := range E {
			cl := i*E + k
			rc := getRef(blk, k, bits)
			var want uint64
			if cl < int64(len(c.refs)) {
				stored[cl] = rc
				want = uint64(c.refs[cl])
			}
			switch {
			case rc < want:
				c.corrupt("cluster %d refcount=%d reference=%d", cl, rc, want)
			case rc > want:
				c.res.Leaks++
				c.res.Messages = append(c.res.Messages, fmt.Sprintf("Leaked cluster %d refcount=%d reference=%d", cl, rc, want))
				if repair {
					putRef(blk, k, bits, want)
					dirty = true
					c.res.LeaksFixed++
				}
			}
		}
		if dirty {
			if _, err := c.f.WriteAt(blk, off); err != nil {
				return nil, fmt.Errorf("qcow2: repair refcount block at %#x: %w", off, err)
			}
		}
	}
	for cl := covered; cl < int64(len(c.refs)); cl++ {
		if c.refs[cl] > 0 {
			c.corrupt("cluster %d refcount=0 reference=%d (not covered by the refcount table)", cl, c.refs[cl])
		}
	}
	for cl, r := range c.refs {
		if r > 0 {
			c.res.ImageEndOffset = int64(cl+1) * c.cs
		}
	}
	if repair && c.res.LeaksFixed > 0 {
		if err := c.f.Sync(); err != nil {
			return nil, fmt.Errorf("qcow2: repair: %w", err)
		}
		c.res.Leaks -= c.res.LeaksFixed
	}
	return stored, nil
}

// checkCopied verifies the "refcount is exactly one" flags of the active
// L1 and L2 tables.
func (c *checker) checkCopied(stored []uint64) {
	rc := func(off int64) uint64 {
		if cl := off / c.cs; cl < int64(len(stored)) {
			return stored[cl]
		}
		return 0
	}
	l1 := c.read("L1 table", int64(c.h.l1Off), int64(c.h.l1Size)*8)
	l2n := c.h.l2Entries()
	for i := 0; i+8 <= len(l1); i += 8 {
		e := binary.BigEndian.Uint64(l1[i:])
		off := int64(e & offsetMask)
		if off == 0 || off%c.cs != 0 {
			continue
		}
		if (e&flagCopied != 0) != (rc(off) == 1) {
			c.corrupt("OFLAG_COPIED L2 cluster: l1_index=%d l1_entry=%x refcount=%d", i/8, e, rc(off))
		}
		if u := c.uses[off]; u == nil || u.index != int64(i/8) {
			continue // read once, for the entry that first referenced it
		}
		l2 := c.read("L2 table", off, c.cs)
		for j := int64(0); j < l2n && l2 != nil; j++ {
			stride := int64(8)
			if c.h.extL2() {
				stride = 16
			}
			e := binary.BigEndian.Uint64(l2[j*stride:])
			host := int64(e & offsetMask)
			if e&flagCompressed != 0 || host == 0 || host%c.cs != 0 {
				continue
			}
			if (e&flagCopied != 0) != (rc(host) == 1) {
				c.corrupt("OFLAG_COPIED data cluster: l2_entry=%x refcount=%d", e, rc(host))
			}
		}
	}
}
