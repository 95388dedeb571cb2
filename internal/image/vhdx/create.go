package vhdx

import (
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
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

// Create makes a new VHDX at path (it must not exist). opt.Options may set
// subformat (dynamic, the default, or fixed) and logical_sector_size (512,
// the default, or 4096). opt.ClusterSize sets the block size (a power of
// two from 1 MiB to 256 MiB). Differencing disks are not created.
func Create(path string, opt image.CreateOptions) error {
	if err := opt.Validate(); err != nil {
		return err
	}
	if opt.BackingFile != "" {
		return fmt.Errorf("vhdx: creating differencing disks is not supported: %w", errUnsupported)
	}
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
	if size <= 0 || size > maxSize {
		return fmt.Errorf("vhdx: size %d: want 1 byte to 64 TiB", opt.Size)
	}
	m := &metadata{blockSize: bs, size: size, lss: lss, pss: 4096, leaveAlloc: fixed, diskID: newGUID()}
	entries := m.batEntries()
	logOff := int64(mib)
	batOff := logOff + logLength
	batLen := (entries*8 + mib - 1) / mib * mib
	metaOff := batOff + batLen
	dataOff := metaOff + mib
	head := make([]byte, dataOff)
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
	mt := head[metaOff:]
	copy(mt, signatureMetaTab)
	items := []struct {
		g     guid
		data  []byte
		flags uint32
	}{
		{metaFileParams, le.AppendUint32(le.AppendUint32(nil, uint32(bs)), map[bool]uint32{true: 1}[fixed]), 4},
		{metaDiskSize, le.AppendUint64(nil, uint64(size)), 6},
		{metaPage83, m.diskID[:], 6},
		{metaLogicalSS, le.AppendUint32(nil, uint32(lss)), 6},
		{metaPhysicalSS, le.AppendUint32(nil, uint32(m.pss)), 6},
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
	fileSize := dataOff
	if fixed {
		blocks := (size + bs - 1) / bs
		for b := range blocks {
			i := b + b/m.chunkRatio()
			le.PutUint64(head[batOff+8*i:], uint64((dataOff+b*bs)/mib)<<batOffsetShift|stateFullPresent)
		}
		fileSize += blocks * bs
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("vhdx: create: %w", err)
	}
	_, err = f.WriteAt(head, 0)
	if err == nil {
		err = f.Truncate(fileSize)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("vhdx: create %s: %w", path, err)
	}
	return nil
}
