package luks

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
)

// KeyslotOptions tune AddKey and ChangeKey.
type KeyslotOptions struct {
	// Keyslot, when not nil, is the keyslot AddKey must use (it must be
	// free); otherwise the first free one is taken.
	Keyslot *int
	// PBKDF chooses the new keyslot's KDF (default argon2id benchmarked for
	// LUKS2, pbkdf2 with the volume's hash for LUKS1).
	PBKDF PBKDFOptions
	// Limits bound the KDF cost of each keyslot tried to unlock the volume
	// with the current passphrase; zero fields are the defaults.
	Limits Limits
}

// newSlotKDF resolves o for a new keyslot of v.
func (v *Volume) newSlotKDF(o PBKDFOptions) (KDF, error) {
	if h := v.v1; h != nil {
		if o.Type != "" && o.Type != "pbkdf2" {
			return KDF{}, fmt.Errorf("luks: LUKS1 keyslot with kdf %q: %w (LUKS1 has only pbkdf2)", o.Type, ErrOptions)
		}
		if o.Hash != "" && o.Hash != h.hashSpec {
			return KDF{}, fmt.Errorf("luks: LUKS1 keyslot with hash %q on a %q volume: %w", o.Hash, h.hashSpec, ErrOptions)
		}
		o.Type, o.Hash = "pbkdf2", h.hashSpec
		return o.resolve("pbkdf2")
	}
	return o.resolve("argon2id")
}

// activeSlots returns the ids of the active keyslots.
func (v *Volume) activeSlots() []int {
	if h := v.v1; h != nil {
		var out []int
		for i, s := range h.slots {
			if s.active == luks1SlotActive {
				out = append(out, i)
			}
		}
		return out
	}
	return ids(v.meta.keyslots)
}

// AddKey adds a keyslot opened by newPass, after unlocking the volume with
// pass, and returns its number.
func (v *Volume) AddKey(pass, newPass []byte, opt KeyslotOptions) (int, error) {
	vk, _, err := v.UnlockKeyContext(context.Background(), pass, opt.Limits)
	if err != nil {
		return -1, err
	}
	defer clear(vk)
	kdf, err := v.newSlotKDF(opt.PBKDF)
	if err != nil {
		return -1, err
	}
	want := -1
	if opt.Keyslot != nil {
		want = *opt.Keyslot
	}
	if v.v1 != nil {
		return v.addKeyLUKS1(vk, newPass, kdf, want)
	}
	return v.addKeyLUKS2(vk, newPass, kdf, want)
}

// RemoveKey removes the keyslot that pass opens and returns its number. It
// refuses (ErrLastKeyslot) to remove the only active keyslot. It unlocks
// with the default Limits: RemoveKeyContext with a background context.
func (v *Volume) RemoveKey(pass []byte) (int, error) {
	return v.RemoveKeyContext(context.Background(), pass, Limits{})
}

// RemoveKeyContext is RemoveKey unlocking with ctx and lim (see
// UnlockKeyContext).
func (v *Volume) RemoveKeyContext(ctx context.Context, pass []byte, lim Limits) (int, error) {
	vk, id, err := v.UnlockKeyContext(ctx, pass, lim)
	if err != nil {
		return -1, err
	}
	clear(vk)
	return id, v.KillSlot(id)
}

// KillSlot removes keyslot id without asking for its passphrase, and
// overwrites its key material with random bytes. It refuses to remove the
// only active keyslot (ErrLastKeyslot).
func (v *Volume) KillSlot(id int) error {
	act := v.activeSlots()
	if !slices.Contains(act, id) {
		return fmt.Errorf("luks: keyslot %d is not active", id)
	}
	if len(act) == 1 {
		return fmt.Errorf("luks: keyslot %d: %w", id, ErrLastKeyslot)
	}
	if h := v.v1; h != nil {
		s := &h.slots[id]
		off, n := int64(s.keyMaterialOffset)*sectorSize, afSize(int(h.keyBytes), int(s.stripes))
		s.active, s.iterations, s.salt = luks1SlotFree, 0, [saltSize]byte{}
		if err := v.writeLUKS1(); err != nil {
			return err
		}
		return v.flushed(wipeRandom(v.dev, off, n))
	}
	area := v.meta.keyslots[id].Area
	v.dropLUKS2Slot(id)
	if err := v.writeLUKS2(); err != nil {
		return err
	}
	return v.flushed(wipeRandom(v.dev, int64(area.Offset), int64(area.Size)))
}

// ChangeKey replaces the passphrase of the keyslot pass opens with newPass
// and returns the keyslot's number. LUKS2 keeps the keyslot number (the new
// material is written to a free area first, so an interruption leaves the
// old passphrase working); LUKS1 moves the key to a free keyslot and
// removes the old one. opt.Keyslot is ignored.
func (v *Volume) ChangeKey(pass, newPass []byte, opt KeyslotOptions) (int, error) {
	vk, id, err := v.UnlockKeyContext(context.Background(), pass, opt.Limits)
	if err != nil {
		return -1, err
	}
	defer clear(vk)
	kdf, err := v.newSlotKDF(opt.PBKDF)
	if err != nil {
		return -1, err
	}
	if v.v1 != nil {
		nid, err := v.addKeyLUKS1(vk, newPass, kdf, -1)
		if err != nil {
			return -1, err
		}
		return nid, v.KillSlot(id)
	}
	old := v.meta.keyslots[id].Area
	if _, err := v.sealLUKS2Slot(vk, newPass, kdf, id); err != nil {
		return -1, err
	}
	return id, v.flushed(wipeRandom(v.dev, int64(old.Offset), int64(old.Size)))
}

// flushed flushes the device after a step that returned err.
func (v *Volume) flushed(err error) error {
	if err != nil {
		return err
	}
	if err := v.dev.Flush(); err != nil {
		return fmt.Errorf("luks: flush: %w", err)
	}
	return nil
}

// addKeyLUKS1 stores vk in LUKS1 keyslot want (or the first free one).
func (v *Volume) addKeyLUKS1(vk, pass []byte, kdf KDF, want int) (int, error) {
	h := v.v1
	id := -1
	for i, s := range h.slots {
		if s.active == luks1SlotFree && (want < 0 || want == i) {
			id = i
			break
		}
	}
	if id < 0 {
		if want >= 0 {
			return -1, fmt.Errorf("luks: keyslot %d: %w", want, ErrNoFreeKeyslot)
		}
		return -1, ErrNoFreeKeyslot
	}
	s := &h.slots[id]
	salt := randomSalt(saltSize)
	mat, err := sealKey(vk, pass, kdf, salt, h.cipherSpec(), int(h.keyBytes), h.hashSpec)
	if err != nil {
		return -1, err
	}
	defer clear(mat)
	if _, err := v.dev.WriteAt(mat, int64(s.keyMaterialOffset)*sectorSize); err != nil {
		return -1, fmt.Errorf("luks: write keyslot %d material: %w", id, err)
	}
	s.active, s.iterations, s.stripes = luks1SlotActive, kdf.Iterations, afStripes
	copy(s.salt[:], salt)
	return id, v.writeLUKS1()
}

// writeLUKS1 writes the phdr and flushes.
func (v *Volume) writeLUKS1() error {
	b := v.v1.marshal()
	if _, err := parseLUKS1(b, v.dev.Size()); err != nil {
		return fmt.Errorf("luks: new header does not validate: %w", err)
	}
	if err := v.flushed(nil); err != nil { // key material first
		return err
	}
	if _, err := v.dev.WriteAt(b, 0); err != nil {
		return fmt.Errorf("luks: write header: %w", err)
	}
	return v.flushed(nil)
}

// addKeyLUKS2 stores vk in a new LUKS2 keyslot want (or the lowest free id).
func (v *Volume) addKeyLUKS2(vk, pass []byte, kdf KDF, want int) (int, error) {
	id := want
	if id < 0 {
		for id = 0; id < luks2MaxKeyslots && v.meta.keyslots[id] != nil; id++ {
		}
	}
	if id >= luks2MaxKeyslots || v.meta.keyslots[id] != nil {
		return -1, fmt.Errorf("luks: keyslot %d: %w", id, ErrNoFreeKeyslot)
	}
	return v.sealLUKS2Slot(vk, pass, kdf, id)
}

// sealLUKS2Slot writes vk sealed by pass to a free area and makes keyslot
// id (new, or replaced) point to it.
func (v *Volume) sealLUKS2Slot(vk, pass []byte, kdf KDF, id int) (int, error) {
	seg := v.meta.segments[0]
	did := v.segmentDigest()
	if seg == nil || did < 0 {
		return -1, fmt.Errorf("luks: no data segment with a digest: %w", ErrCorrupt)
	}
	dg := v.meta.digests[did]
	need := keyslotAreaSize(len(vk))
	off, err := v.freeArea(need, int64(seg.Offset))
	if err != nil {
		return -1, err
	}
	salt := randomSalt(saltSize)
	mat, err := sealKey(vk, pass, kdf, salt, seg.Encryption, len(vk), dg.Hash)
	if err != nil {
		return -1, err
	}
	defer clear(mat)
	if _, err := v.dev.WriteAt(mat, off); err != nil {
		return -1, fmt.Errorf("luks: write keyslot %d material at %d: %w", id, off, err)
	}
	ks := &l2Keyslot{
		Type: "luks2", KeySize: len(vk),
		AF:   l2AF{Type: "luks1", Stripes: afStripes, Hash: dg.Hash},
		Area: l2Area{Type: "raw", Offset: u64(off), Size: u64(need), Encryption: seg.Encryption, KeySize: len(vk)},
		KDF: l2KDF{Type: kdf.Type, Hash: kdf.Hash, Iterations: kdf.Iterations, Time: kdf.Time,
			Memory: kdf.MemoryKiB, CPUs: kdf.Parallel, Salt: salt},
	}
	raw, err := json.Marshal(ks)
	if err != nil {
		return -1, fmt.Errorf("luks: encode keyslot %d: %w", id, err)
	}
	sid := strconv.Itoa(id)
	v.meta.rawKeyslots[sid] = raw
	v.meta.keyslots[id] = ks
	if !slices.Contains(dg.Keyslots, sid) {
		dg.Keyslots = append(dg.Keyslots, sid)
	}
	if err := v.flushed(nil); err != nil { // key material before the header
		return -1, err
	}
	return id, v.writeLUKS2()
}

// freeArea returns the lowest 4096-aligned offset of need free bytes in the
// keyslots area (and before the data at dataOffset).
func (v *Volume) freeArea(need, dataOffset int64) (int64, error) {
	start := 2 * v.v2.hdrSize
	end := min(start+int64(v.meta.config.KeyslotsSize), dataOffset)
	type span struct{ off, end int64 }
	var used []span
	for _, ks := range v.meta.keyslots {
		used = append(used, span{int64(ks.Area.Offset), int64(ks.Area.Offset + ks.Area.Size)})
	}
	slices.SortFunc(used, func(a, b span) int { return cmp.Compare(a.off, b.off) })
	off := start
	for _, u := range used {
		if off+need <= u.off {
			break
		}
		off = max(off, (u.end+luks2AreaAlign-1)/luks2AreaAlign*luks2AreaAlign)
	}
	if off+need > end {
		return 0, fmt.Errorf("luks: keyslots area has no %d free bytes: %w", need, ErrNoFreeKeyslot)
	}
	return off, nil
}

// dropLUKS2Slot removes keyslot id from the metadata and from the digests
// and tokens that name it.
func (v *Volume) dropLUKS2Slot(id int) {
	sid := strconv.Itoa(id)
	delete(v.meta.rawKeyslots, sid)
	delete(v.meta.keyslots, id)
	for _, d := range v.meta.digests {
		d.Keyslots = slices.DeleteFunc(d.Keyslots, func(s string) bool { return s == sid })
	}
	for tid, t := range v.meta.tokens {
		if !slices.Contains(t.Keyslots, sid) {
			continue
		}
		var obj map[string]json.RawMessage
		if json.Unmarshal(v.meta.rawTokens[strconv.Itoa(tid)], &obj) != nil {
			continue // parsed once already: cannot happen
		}
		t.Keyslots = slices.DeleteFunc(t.Keyslots, func(s string) bool { return s == sid })
		obj["keyslots"], _ = json.Marshal(t.Keyslots)
		v.meta.rawTokens[strconv.Itoa(tid)], _ = json.Marshal(obj)
	}
}

// writeLUKS2 writes both header copies with the next sequence id, after
// checking that they parse back, and flushes.
func (v *Volume) writeLUKS2() error {
	js, err := v.meta.marshal()
	if err != nil {
		return fmt.Errorf("luks: encode metadata: %w", err)
	}
	bin := *v.v2
	bin.seqid++
	p, err := bin.marshal(js, 0)
	if err != nil {
		return err
	}
	s, err := bin.marshal(js, bin.hdrSize)
	if err != nil {
		return err
	}
	_, meta, err := parseLUKS2Copy(p, 0)
	if err != nil {
		return fmt.Errorf("luks: new header does not validate: %w", err)
	}
	if _, err := v.dev.WriteAt(p, 0); err != nil {
		return fmt.Errorf("luks: write primary header: %w", err)
	}
	if _, err := v.dev.WriteAt(s, bin.hdrSize); err != nil {
		return fmt.Errorf("luks: write secondary header: %w", err)
	}
	*v.v2, v.meta, v.secondary = bin, meta, false
	return v.flushed(nil)
}
