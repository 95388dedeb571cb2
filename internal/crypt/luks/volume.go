package luks

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"

	"vdisk/internal/blockdev"
	"vdisk/internal/crypt"
)

// Volume is a LUKS volume's header as read from a device: enough to dump
// it, unlock it and manage its keyslots. It holds no secrets.
//
// A Volume is not safe for concurrent use, and two Volumes (or processes)
// must not change the same header at once: the device's own lock (the
// daemon's open) is what keeps that from happening.
type Volume struct {
	dev blockdev.Device

	v1 *luks1Header

	v2        *luks2Bin
	meta      *luks2Meta
	secondary bool // v2 was read from the secondary copy
}

// Load reads the LUKS header at the start of dev. A LUKS2 header whose
// primary copy is damaged is read from its secondary copy (and both are
// written again on the next change). It returns ErrNotLUKS when dev holds
// no LUKS header, and ErrCorrupt naming the problem when it holds a broken
// one.
func Load(dev blockdev.Device) (*Volume, error) {
	size := dev.Size()
	var hdr [luks1HeaderSize]byte
	if size >= int64(len(hdr)) {
		if _, err := dev.ReadAt(hdr[:], 0); err != nil {
			return nil, fmt.Errorf("luks: read header: %w", err)
		}
	}
	v := &Volume{dev: dev}
	if bytes.Equal(hdr[:6], luksMagic) && hdr[l1Version] == 0 && hdr[l1Version+1] == 1 {
		h, err := parseLUKS1(hdr[:], size)
		if err != nil {
			return nil, err
		}
		v.v1 = h
		return v, nil
	}
	bin, meta, secondary, err := readLUKS2(dev, size)
	if err != nil {
		if !bytes.Equal(hdr[:6], luksMagic) && !hasSecondaryMagic(dev, size) {
			return nil, ErrNotLUKS
		}
		return nil, err
	}
	v.v2, v.meta, v.secondary = bin, meta, secondary
	return v, nil
}

// hasSecondaryMagic reports whether a LUKS2 secondary header's magic is at
// any offset LUKS2 allows.
func hasSecondaryMagic(r io.ReaderAt, size int64) bool {
	for _, off := range luks2HdrSizes {
		if hasMagicAt(r, size, off, luks2SecondaryMagic) {
			return true
		}
	}
	return false
}

// Version returns 1 or 2.
func (v *Volume) Version() int {
	if v.v1 != nil {
		return 1
	}
	return 2
}

// UsedSecondary reports whether a LUKS2 header was read from its secondary
// copy because the primary is damaged or older.
func (v *Volume) UsedSecondary() bool { return v.secondary }

// segment is the data segment of a usable volume.
type segment struct {
	cipher     string
	offset     int64
	size       int64 // 0: to the end of the device
	sectorSize int
	ivTweak    uint64
}

// usable checks that v is a volume this package can unlock and returns its
// data segment, or ErrUnsupported naming what it lacks.
func (v *Volume) usable() (segment, error) {
	if h := v.v1; h != nil {
		if h.payloadOffset == 0 {
			return segment{}, fmt.Errorf("luks: detached LUKS1 header (payload offset 0): %w", ErrUnsupported)
		}
		if _, err := hashFunc(h.hashSpec); err != nil {
			return segment{}, err
		}
		return segment{cipher: h.cipherSpec(), offset: int64(h.payloadOffset) * sectorSize, sectorSize: sectorSize}, nil
	}
	m := v.meta
	if r := m.config.Requirements; r != nil && len(r.Mandatory) > 0 {
		return segment{}, fmt.Errorf("luks: mandatory requirements %q: %w", r.Mandatory, ErrUnsupported)
	}
	for _, id := range ids(m.keyslots) {
		if t := m.keyslots[id].Type; t != "luks2" {
			return segment{}, fmt.Errorf("luks: keyslot %d of type %q: %w", id, t, ErrUnsupported)
		}
	}
	if len(m.segments) != 1 || m.segments[0] == nil {
		return segment{}, fmt.Errorf("luks: %d data segments (reencryption?): %w", len(m.segments), ErrUnsupported)
	}
	s := m.segments[0]
	if s.Type != "crypt" {
		return segment{}, fmt.Errorf("luks: segment of type %q: %w", s.Type, ErrUnsupported)
	}
	if len(s.Integrity) > 0 && string(s.Integrity) != "null" {
		return segment{}, fmt.Errorf("luks: integrity profile %s (dm-integrity): %w", truncate(s.Integrity), ErrUnsupported)
	}
	if hdrEnd := 2*v.v2.hdrSize + int64(m.config.KeyslotsSize); int64(s.Offset) < hdrEnd {
		return segment{}, fmt.Errorf("luks: data segment at %d inside the %d-byte header area (a detached header?): %w",
			s.Offset, hdrEnd, ErrUnsupported)
	}
	seg := segment{cipher: s.Encryption, offset: int64(s.Offset), sectorSize: s.SectorSize, ivTweak: uint64(s.IVTweak)}
	if s.Size != "dynamic" {
		seg.size, _ = strconv.ParseInt(s.Size, 10, 64) // validated at parse
		if seg.size == 0 {
			return segment{}, fmt.Errorf("luks: empty data segment: %w", ErrCorrupt)
		}
	}
	if d := v.segmentDigest(); d < 0 {
		return segment{}, fmt.Errorf("luks: no digest for the data segment: %w", ErrCorrupt)
	}
	return seg, nil
}

// segmentDigest returns the id of the digest of segment 0, or -1.
func (v *Volume) segmentDigest() int {
	for _, id := range ids(v.meta.digests) {
		if slices.Contains(v.meta.digests[id].Segments, "0") {
			return id
		}
	}
	return -1
}

// slot describes an active keyslot in the terms unlocking needs.
type slot struct {
	id          int
	kdf         KDF
	salt        []byte
	keySize     int    // volume key
	areaOffset  int64  // key material
	areaCipher  string // cipher of the key material
	areaKeySize int
	stripes     int
	afHash      string
}

// slots returns the active keyslots in the order unlocking tries them:
// LUKS2 high priority first, ignored (priority 0) ones left out.
func (v *Volume) slots() []slot {
	var out []slot
	if h := v.v1; h != nil {
		for i, s := range h.slots {
			if s.active != luks1SlotActive {
				continue
			}
			out = append(out, slot{
				id: i, kdf: KDF{Type: "pbkdf2", Hash: h.hashSpec, Iterations: s.iterations},
				salt: s.salt[:], keySize: int(h.keyBytes), areaOffset: int64(s.keyMaterialOffset) * sectorSize,
				areaCipher: h.cipherSpec(), areaKeySize: int(h.keyBytes), stripes: int(s.stripes), afHash: h.hashSpec,
			})
		}
		return out
	}
	var high []slot
	for _, id := range ids(v.meta.keyslots) {
		ks := v.meta.keyslots[id]
		s := slot{
			id: id, kdf: ks.KDF.kdf(), salt: ks.KDF.Salt, keySize: ks.KeySize, areaOffset: int64(ks.Area.Offset),
			areaCipher: ks.Area.Encryption, areaKeySize: ks.Area.KeySize, stripes: ks.AF.Stripes, afHash: ks.AF.Hash,
		}
		switch {
		case ks.Priority != nil && *ks.Priority == 0:
		case ks.Priority != nil && *ks.Priority == 2:
			high = append(high, s)
		default:
			out = append(out, s)
		}
	}
	return append(high, out...)
}

// keyFromSlot derives the key of slot s from pass and recovers the volume
// key from its material. The caller checks it against the digest and wipes
// it. Everything that can be checked is checked before the derivation.
func (v *Volume) keyFromSlot(s slot, pass []byte) ([]byte, error) {
	if s.afHash == "" {
		return nil, fmt.Errorf("luks: keyslot %d: no AF hash: %w", s.id, ErrCorrupt)
	}
	newHash, err := hashFunc(s.afHash)
	if err != nil {
		return nil, fmt.Errorf("luks: keyslot %d: %w", s.id, err)
	}
	n := afSize(s.keySize, s.stripes) // at most maxKeySize × afStripes, checked at parse
	if size := v.dev.Size(); s.areaOffset < 0 || s.areaOffset > size || n > size-s.areaOffset {
		return nil, fmt.Errorf("luks: keyslot %d: %d bytes of key material at %d beyond the %d-byte device: %w",
			s.id, n, s.areaOffset, size, ErrCorrupt)
	}
	probe := make([]byte, s.areaKeySize)
	c, err := crypt.NewCipher(s.areaCipher, probe)
	if err != nil {
		return nil, fmt.Errorf("luks: keyslot %d: %w (%w)", s.id, err, ErrUnsupported)
	}
	c.Wipe()
	k, err := s.kdf.derive(pass, s.salt, s.areaKeySize)
	if err != nil {
		return nil, fmt.Errorf("luks: keyslot %d: %w", s.id, err)
	}
	defer clear(k)
	if c, err = crypt.NewCipher(s.areaCipher, k); err != nil {
		return nil, fmt.Errorf("luks: keyslot %d: %w (%w)", s.id, err, ErrUnsupported)
	}
	defer c.Wipe()
	mat := make([]byte, n)
	defer clear(mat)
	if _, err := v.dev.ReadAt(mat, s.areaOffset); err != nil {
		return nil, fmt.Errorf("luks: read keyslot %d material at %d: %w", s.id, s.areaOffset, err)
	}
	for i := 0; i < len(mat); i += sectorSize {
		c.Decrypt(mat[i:i+sectorSize], uint64(i/sectorSize))
	}
	key := make([]byte, s.keySize)
	afMerge(key, mat[:s.keySize*s.stripes], s.stripes, newHash)
	return key, nil
}

// checkKey reports whether key is the volume key that keyslot id's digest
// (the phdr's for LUKS1) describes.
func (v *Volume) checkKey(id int, key []byte) (bool, error) {
	if h := v.v1; h != nil {
		d, err := pbkdf2Key(h.hashSpec, key, h.mkDigestSalt[:], int(h.mkDigestIter), luks1DigestSize)
		if err != nil {
			return false, err
		}
		return subtle.ConstantTimeCompare(d, h.mkDigest[:]) == 1, nil
	}
	did := v.slotDigest(id)
	if did < 0 {
		return false, fmt.Errorf("luks: keyslot %d has no digest: %w", id, ErrCorrupt)
	}
	dg := v.meta.digests[did]
	if dg.Type != "pbkdf2" {
		return false, fmt.Errorf("luks: digest %d of type %q: %w", did, dg.Type, ErrUnsupported)
	}
	d, err := pbkdf2Key(dg.Hash, key, dg.Salt, int(dg.Iterations), len(dg.Digest))
	if err != nil {
		return false, fmt.Errorf("luks: digest %d: %w", did, err)
	}
	return subtle.ConstantTimeCompare(d, dg.Digest) == 1, nil
}

// UnlockKey returns the volume key that pass opens, and the keyslot that
// opened it, with the default Limits: UnlockKeyContext with a background
// context.
func (v *Volume) UnlockKey(pass []byte) (key []byte, keyslot int, err error) {
	return v.UnlockKeyContext(context.Background(), pass, Limits{})
}

// UnlockKeyContext returns the volume key that pass opens, and the keyslot
// that opened it. It tries the active keyslots one at a time (the time a
// wrong passphrase takes is the sum of their KDFs), each checked against
// lim before anything is derived from it: one over a limit is skipped.
// It returns ErrWrongPassphrase when no keyslot opens, or ErrLimit naming
// the keyslots skipped when some were. ctx is checked before each keyslot:
// once it is done no new derivation starts and its error is returned (a
// derivation under way runs to its end; the limits bound it). The caller
// must wipe the key (clear) when done with it.
func (v *Volume) UnlockKeyContext(ctx context.Context, pass []byte, lim Limits) (key []byte, keyslot int, err error) {
	seg, err := v.usable()
	if err != nil {
		return nil, -1, err
	}
	if err := v.fits(seg); err != nil {
		return nil, -1, err
	}
	lim = lim.orDefaults()
	var errs, skipped []error
	tried := 0
	for _, s := range v.slots() {
		if err := ctx.Err(); err != nil {
			return nil, -1, fmt.Errorf("luks: unlocking stopped before keyslot %d: %w", s.id, err)
		}
		if err := v.slotCost(s, lim); err != nil {
			skipped = append(skipped, err)
			continue
		}
		tried++
		key, err := v.keyFromSlot(s, pass)
		if err != nil {
			errs = append(errs, err) // an unusable slot must not hide a usable one
			continue
		}
		ok, err := v.checkKey(s.id, key)
		if ok && err == nil {
			return key, s.id, nil
		}
		clear(key)
		if err != nil {
			errs = append(errs, err)
		}
	}
	if len(skipped) > 0 {
		msg := "luks: no keyslot can be tried"
		if tried > 0 {
			msg = fmt.Sprintf("luks: none of the %d keyslots tried opens with this passphrase, and %d were not tried", tried, len(skipped))
		}
		return nil, -1, fmt.Errorf("%s: %w", msg, errors.Join(append(skipped, errs...)...))
	}
	if len(errs) > 0 {
		return nil, -1, fmt.Errorf("%w (and: %w)", ErrWrongPassphrase, errors.Join(errs...))
	}
	return nil, -1, ErrWrongPassphrase
}

// slotCost returns an ErrLimit when trying keyslot s costs more than lim
// allows: its KDF, or the PBKDF2 of the digest its key is checked against.
func (v *Volume) slotCost(s slot, lim Limits) error {
	if err := lim.check(s.id, s.kdf); err != nil {
		return err
	}
	if h := v.v1; h != nil {
		return lim.checkDigest(s.id, h.mkDigestIter)
	}
	if did := v.slotDigest(s.id); did >= 0 {
		return lim.checkDigest(s.id, v.meta.digests[did].Iterations)
	}
	return nil // checkKey reports the missing digest
}

// slotDigest returns the id of the LUKS2 digest of keyslot id, or -1.
func (v *Volume) slotDigest(id int) int {
	sid := strconv.Itoa(id)
	for _, did := range ids(v.meta.digests) {
		if slices.Contains(v.meta.digests[did].Keyslots, sid) {
			return did
		}
	}
	return -1
}

// fits checks that the data segment lies within the device (a header may
// be read from a truncated copy, but not unlocked there).
func (v *Volume) fits(seg segment) error {
	size := v.dev.Size()
	if seg.offset > size || seg.size > size-seg.offset {
		what := "to the end"
		if seg.size > 0 {
			what = fmt.Sprintf("of %d bytes", seg.size)
		}
		return fmt.Errorf("luks: data segment at %d %s does not fit the %d-byte device: %w",
			seg.offset, what, size, ErrCorrupt)
	}
	return nil
}

// OpenOptions tune Open.
type OpenOptions struct {
	// AllowDiscards passes discards to the device (see crypt.Config).
	AllowDiscards bool
	// Limits bound the KDF cost of each keyslot tried; zero fields are
	// the defaults (see Limits).
	Limits Limits
}

// Open unlocks the volume with pass and returns the plaintext Device of its
// data segment, and the keyslot that opened: OpenContext with a background
// context.
func (v *Volume) Open(pass []byte, opt OpenOptions) (blockdev.Device, int, error) {
	return v.OpenContext(context.Background(), pass, opt)
}

// OpenContext unlocks the volume with pass (see UnlockKeyContext: ctx stops
// it between keyslots, opt.Limits bounds each) and returns the plaintext
// Device of its data segment, and the keyslot that opened. The Device owns
// v's device from then on (closing it closes the device); v must not be
// used after. On error the device stays the caller's.
func (v *Volume) OpenContext(ctx context.Context, pass []byte, opt OpenOptions) (blockdev.Device, int, error) {
	key, slot, err := v.UnlockKeyContext(ctx, pass, opt.Limits)
	if err != nil {
		return nil, -1, err
	}
	defer clear(key)
	d, err := v.OpenWithKey(key, opt)
	return d, slot, err
}

// OpenWithKey returns the plaintext Device of the data segment, encrypted
// with key (which is not checked against the digest: UnlockKey returns a
// checked one). The key is copied.
func (v *Volume) OpenWithKey(key []byte, opt OpenOptions) (blockdev.Device, error) {
	seg, err := v.usable()
	if err != nil {
		return nil, err
	}
	c, err := crypt.NewCipher(seg.cipher, key)
	if err != nil {
		return nil, fmt.Errorf("luks: data segment: %w (%w)", err, ErrUnsupported)
	}
	d, err := crypt.New(v.dev, crypt.Config{
		Cipher: c, SectorSize: seg.sectorSize, Offset: seg.offset, Size: seg.size,
		IVOffset: seg.ivTweak, AllowDiscards: opt.AllowDiscards,
	})
	if err != nil {
		c.Wipe()
		return nil, fmt.Errorf("luks: data segment: %w", err)
	}
	return d, nil
}

// Open reads the LUKS header of dev and unlocks it with pass (a passphrase,
// or the bytes of a key file): a shortcut for Load and Volume.Open. The
// returned Device owns dev; on error dev stays the caller's to close.
func Open(dev blockdev.Device, pass []byte, opt OpenOptions) (blockdev.Device, error) {
	return OpenContext(context.Background(), dev, pass, opt)
}

// OpenContext is Open with a context that stops unlocking between
// keyslots (see Volume.UnlockKeyContext).
func OpenContext(ctx context.Context, dev blockdev.Device, pass []byte, opt OpenOptions) (blockdev.Device, error) {
	v, err := Load(dev)
	if err != nil {
		return nil, err
	}
	d, _, err := v.OpenContext(ctx, pass, opt)
	return d, err
}

// IsLUKS reports whether dev starts with a LUKS1 or LUKS2 header magic, or
// holds a LUKS2 secondary header (whose primary copy may be damaged). It
// checks magics only: Load says whether the header is usable.
func IsLUKS(dev blockdev.Device) bool {
	size := dev.Size()
	return hasMagicAt(dev, size, 0, luksMagic) || hasSecondaryMagic(dev, size)
}
