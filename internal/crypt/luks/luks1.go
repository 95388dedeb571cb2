package luks

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// LUKS1 on-disk constants (LUKS1 On-Disk Format Specification 1.2.3).
const (
	luks1HeaderSize = 592 // the phdr
	luks1Slots      = 8   // LUKS_NUMKEYS
	luks1DigestSize = 20  // LUKS_DIGESTSIZE
	luks1SlotActive = 0x00AC71F3
	luks1SlotFree   = 0x0000DEAD
	afStripes       = 4000 // LUKS_STRIPES
	sectorSize      = 512  // LUKS counts offsets in 512-byte sectors
	luks1Align      = 4096 // keyslot material alignment cryptsetup uses
)

// luksMagic and luks2SecondaryMagic start the headers.
var (
	luksMagic           = []byte{'L', 'U', 'K', 'S', 0xba, 0xbe}
	luks2SecondaryMagic = []byte{'S', 'K', 'U', 'L', 0xba, 0xbe}
)

// luks1Header is the LUKS1 phdr.
type luks1Header struct {
	cipherName    string // "aes"
	cipherMode    string // "xts-plain64"
	hashSpec      string // "sha256"
	payloadOffset uint32 // sectors
	keyBytes      uint32
	mkDigest      [luks1DigestSize]byte
	mkDigestSalt  [saltSize]byte
	mkDigestIter  uint32
	uuid          string
	slots         [luks1Slots]luks1Slot
}

// luks1Slot is one of the phdr's key slots.
type luks1Slot struct {
	active            uint32
	iterations        uint32
	salt              [saltSize]byte
	keyMaterialOffset uint32 // sectors
	stripes           uint32
}

// Field offsets in the phdr.
const (
	l1Version       = 6
	l1CipherName    = 8
	l1CipherMode    = 40
	l1HashSpec      = 72
	l1PayloadOffset = 104
	l1KeyBytes      = 108
	l1MKDigest      = 112
	l1MKDigestSalt  = 132
	l1MKDigestIter  = 164
	l1UUID          = 168
	l1Slots         = 208
	l1SlotSize      = 48
)

// cstring returns the NUL-terminated string in b, or an error naming field
// when b has no NUL.
func cstring(b []byte, field string) (string, error) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return "", fmt.Errorf("luks: %s is not NUL-terminated: %w", field, ErrCorrupt)
	}
	return string(b[:i]), nil
}

func putCString(b []byte, s string) { copy(b, s) }

// parseLUKS1 decodes and checks a LUKS1 phdr; devSize bounds the offsets.
func parseLUKS1(b []byte, devSize int64) (*luks1Header, error) {
	if len(b) < luks1HeaderSize || !bytes.Equal(b[:6], luksMagic) {
		return nil, ErrNotLUKS
	}
	be := binary.BigEndian
	if v := be.Uint16(b[l1Version:]); v != 1 {
		return nil, fmt.Errorf("luks: version %d in a LUKS1 header: %w", v, ErrCorrupt)
	}
	h := &luks1Header{
		payloadOffset: be.Uint32(b[l1PayloadOffset:]),
		keyBytes:      be.Uint32(b[l1KeyBytes:]),
		mkDigestIter:  be.Uint32(b[l1MKDigestIter:]),
	}
	var err error
	for _, f := range []struct {
		dst  *string
		off  int
		n    int
		name string
	}{
		{&h.cipherName, l1CipherName, 32, "cipher name"},
		{&h.cipherMode, l1CipherMode, 32, "cipher mode"},
		{&h.hashSpec, l1HashSpec, 32, "hash spec"},
		{&h.uuid, l1UUID, 40, "uuid"},
	} {
		if *f.dst, err = cstring(b[f.off:f.off+f.n], f.name); err != nil {
			return nil, err
		}
	}
	copy(h.mkDigest[:], b[l1MKDigest:])
	copy(h.mkDigestSalt[:], b[l1MKDigestSalt:])
	if h.keyBytes == 0 || h.keyBytes > maxKeySize {
		return nil, fmt.Errorf("luks: key size %d bytes: %w", h.keyBytes, ErrCorrupt)
	}
	if h.mkDigestIter == 0 {
		return nil, fmt.Errorf("luks: volume key digest with 0 iterations: %w", ErrCorrupt)
	}
	payload := int64(h.payloadOffset) * sectorSize
	if payload > devSize {
		return nil, fmt.Errorf("luks: payload offset %d beyond the %d-byte device: %w", payload, devSize, ErrCorrupt)
	}
	for i := range h.slots {
		s := &h.slots[i]
		o := b[l1Slots+i*l1SlotSize:]
		s.active = be.Uint32(o)
		s.iterations = be.Uint32(o[4:])
		copy(s.salt[:], o[8:8+saltSize])
		s.keyMaterialOffset = be.Uint32(o[40:])
		s.stripes = be.Uint32(o[44:])
		switch s.active {
		case luks1SlotFree:
			continue
		case luks1SlotActive:
		default:
			return nil, fmt.Errorf("luks: keyslot %d state %#x: %w", i, s.active, ErrCorrupt)
		}
		start := int64(s.keyMaterialOffset) * sectorSize
		end := start + afSize(int(h.keyBytes), int(s.stripes))
		if s.iterations == 0 || s.stripes == 0 || s.stripes > afStripes || start < luks1HeaderSize ||
			(payload > 0 && end > payload) || end > devSize {
			return nil, fmt.Errorf("luks: keyslot %d: iterations %d, stripes %d, material [%d, %d): %w",
				i, s.iterations, s.stripes, start, end, ErrCorrupt)
		}
	}
	return h, nil
}

// marshal encodes the phdr.
func (h *luks1Header) marshal() []byte {
	b := make([]byte, luks1HeaderSize)
	be := binary.BigEndian
	copy(b, luksMagic)
	be.PutUint16(b[l1Version:], 1)
	putCString(b[l1CipherName:l1CipherName+31], h.cipherName)
	putCString(b[l1CipherMode:l1CipherMode+31], h.cipherMode)
	putCString(b[l1HashSpec:l1HashSpec+31], h.hashSpec)
	be.PutUint32(b[l1PayloadOffset:], h.payloadOffset)
	be.PutUint32(b[l1KeyBytes:], h.keyBytes)
	copy(b[l1MKDigest:], h.mkDigest[:])
	copy(b[l1MKDigestSalt:], h.mkDigestSalt[:])
	be.PutUint32(b[l1MKDigestIter:], h.mkDigestIter)
	putCString(b[l1UUID:l1UUID+39], h.uuid)
	for i, s := range h.slots {
		o := b[l1Slots+i*l1SlotSize:]
		be.PutUint32(o, s.active)
		be.PutUint32(o[4:], s.iterations)
		copy(o[8:], s.salt[:])
		be.PutUint32(o[40:], s.keyMaterialOffset)
		be.PutUint32(o[44:], s.stripes)
	}
	return b
}

// cipherSpec is the dm-crypt cipher string of the volume: "aes-xts-plain64".
func (h *luks1Header) cipherSpec() string { return h.cipherName + "-" + h.cipherMode }

// afSize is the size on disk of a key of keyBytes split into stripes:
// whole 512-byte sectors.
func afSize(keyBytes, stripes int) int64 {
	n := int64(keyBytes) * int64(stripes)
	return (n + sectorSize - 1) / sectorSize * sectorSize
}
