package vhdx

import (
	"encoding/binary"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"unicode/utf16"

	"vdisk/internal/image"
)

// Create defaults.
const (
	// DefaultBlockSize is the payload block size Create uses (Hyper-V's
	// default).
	DefaultBlockSize = 32 << 20
	logLength        = mib
	creator          = "vdisk"
)

// createFile writes a new VHDX into f, an empty file (the registry's
// CreateFile). opt.Options may set subformat (dynamic, the default, or
// fixed) and logical_sector_size (512, the default, or 4096).
// opt.ClusterSize sets the block size (a power of two from 1 MiB to 256
// MiB). With opt.BackingFile a differencing disk of its VHDX parent
// (opened through opt.Names) is made: the parent's size and sector size,
// and a parent locator with the parent's data-write GUID and the name as
// given (relative_path, or absolute_win32_path for an absolute one).
func createFile(f image.File, opt image.CreateOptions) error {
	fixed, lss := false, int64(512)
	for k, v := range opt.Options {
		switch {
		case k == "subformat" && v == "fixed":
			fixed = true
		case k == "subformat" && v == "dynamic":
		case k == "logical_sector_size" && (v == "512" || v == "4096"):
			lss, _ = strconv.ParseInt(v, 10, 64)
		default:
			return fmt.Errorf("vhdx: option %s=%q: want subformat=dynamic|fixed or logical_sector_size=512|4096", k, v)
		}
	}
	bs := opt.ClusterSize
	if bs == 0 {
		bs = DefaultBlockSize
	}
	if bs < mib || bs > 256*mib || bs&(bs-1) != 0 {
		return fmt.Errorf("vhdx: block size %d: want a power of two from 1 MiB to 256 MiB", bs)
	}
	size := (opt.Size + lss - 1) / lss * lss
	var locator []byte
	if opt.BackingFile != "" {
		if fixed {
			return fmt.Errorf("vhdx: a fixed disk cannot have a parent: %w", errUnsupported)
		}
		var err error
		if locator, size, lss, err = parentFor(f, opt); err != nil {
			return err
		}
	}
	if size <= 0 || size > maxSize {
		return fmt.Errorf("vhdx: size %d: want 1 byte to 64 TiB", opt.Size)
	}
	m := &metadata{blockSize: bs, size: size, lss: lss, pss: 4096, leaveAlloc: fixed, diskID: newGUID(), hasParent: locator != nil}
	entries := m.batEntries()
	logOff := int64(mib)
	batOff := logOff + logLength
	batLen := (entries*8 + mib - 1) / mib * mib
	metaOff := batOff + batLen
	dataOff := metaOff + mib
	// The first 2 MiB (identifier, headers, region tables, an empty log)
	// and the metadata are built whole; a fixed disk's BAT a MiB at a
	// time; the rest of the file is left sparse.
	head := make([]byte, batOff)
	le := binary.LittleEndian
	copy(head, signatureFileID)
	for i, c := range utf16.Encode([]rune(creator)) {
		le.PutUint16(head[8+2*i:], c)
	}
	h := &header{seq: 1, fileWrite: newGUID(), dataWrite: newGUID(), logOff: logOff, logLen: logLength}
	copy(head[header1Off:], h.encode())
	h.seq = 2
	copy(head[header2Off:], h.encode())
	rt := make([]byte, regionSize)
	le.PutUint32(rt, sigRegion)
	le.PutUint32(rt[8:], 2)
	for i, r := range []struct {
		g        guid
		off, len int64
	}{{regionBAT, batOff, batLen}, {regionMetadata, metaOff, mib}} {
		e := rt[16+32*i:]
		copy(e, r.g[:])
		le.PutUint64(e[16:], uint64(r.off))
		le.PutUint32(e[24:], uint32(r.len))
		le.PutUint32(e[28:], 1) // required
	}
	le.PutUint32(rt[4:], checksum(rt, 4))
	copy(head[region1Off:], rt)
	copy(head[region2Off:], rt)
	mt := make([]byte, mib)
	copy(mt, signatureMetaTab)
	type item struct {
		g     guid
		data  []byte
		flags uint32
	}
	items := []item{
		{metaFileParams, le.AppendUint32(le.AppendUint32(nil, uint32(bs)), leaveAllocated(fixed)), 4},
		{metaDiskSize, le.AppendUint64(nil, uint64(size)), 6},
		{metaPage83, m.diskID[:], 6},
		{metaLogicalSS, le.AppendUint32(nil, uint32(lss)), 6},
		{metaPhysicalSS, le.AppendUint32(nil, uint32(m.pss)), 6},
	}
	if locator != nil {
		le.PutUint32(items[0].data[4:], 2) // has parent
		items = append(items, item{metaParentLoc, locator, 6})
	}
	le.PutUint16(mt[10:], uint16(len(items)))
	at := int64(metaTabSize)
	for i, it := range items {
		e := mt[32+32*i:]
		copy(e, it.g[:])
		le.PutUint32(e[16:], uint32(at))
		le.PutUint32(e[20:], uint32(len(it.data)))
		le.PutUint32(e[24:], it.flags)
		copy(mt[at:], it.data)
		at += int64(len(it.data))
	}
	_, err := f.WriteAt(head, 0)
	if err == nil {
		_, err = f.WriteAt(mt, metaOff)
	}
	blocks := (size + bs - 1) / bs
	end := dataOff
	if fixed {
		bat, cr := make([]byte, mib), m.chunkRatio() // BAT bytes [at, at+1 MiB)
		for at, b := int64(0), int64(0); b < blocks && err == nil; at += mib {
			clear(bat)
			for ; b < blocks && (b+b/cr)*8 < at+mib; b++ {
				le.PutUint64(bat[(b+b/cr)*8-at:], uint64((end+b*bs)/mib)<<batOffsetShift|stateFullPresent)
			}
			_, err = f.WriteAt(bat, batOff+at)
		}
		end += blocks * bs
	}
	if err == nil {
		err = f.Truncate(end)
	}
	if err == nil {
		err = f.Sync()
	}
	if err != nil {
		return fmt.Errorf("vhdx: create %s: %w", f.Name(), err)
	}
	return nil
}

// leaveAllocated is the file parameters' flags of a fixed or dynamic disk.
func leaveAllocated(fixed bool) uint32 {
	if fixed {
		return 1
	}
	return 0
}

// parentFor opens, through opt.Names, the parent a differencing disk in
// f names and returns the parent locator, its size and logical sector
// size.
func parentFor(f image.File, opt image.CreateOptions) ([]byte, int64, int64, error) {
	if opt.BackingFormat != "" && opt.BackingFormat != Name {
		return nil, 0, 0, fmt.Errorf("vhdx: parent format %q: a differencing disk's parent must be a VHDX: %w", opt.BackingFormat, errUnsupported)
	}
	d, err := image.OpenBacking(f, image.Backing{Name: opt.BackingFile, Format: Name, What: "parent"},
		image.OpenOptions{ReadOnly: true, Names: opt.Names})
	if err != nil {
		return nil, 0, 0, fmt.Errorf("vhdx: %w", err)
	}
	defer d.Close()
	p := d.(*Image)
	if opt.Size != 0 && opt.Size != p.m.size {
		return nil, 0, 0, fmt.Errorf("vhdx: a differencing disk has its parent's size %d, not %d: %w", p.m.size, opt.Size, errUnsupported)
	}
	where := [2]string{"relative_path", `.\` + strings.ReplaceAll(opt.BackingFile, "/", `\`)}
	if filepath.IsAbs(opt.BackingFile) {
		where = [2]string{"absolute_win32_path", opt.BackingFile}
	}
	loc := encodeLocator([][2]string{{"parent_linkage", p.hdrs[p.cur].dataWrite.String()}, where})
	return loc, p.m.size, p.m.lss, nil
}
