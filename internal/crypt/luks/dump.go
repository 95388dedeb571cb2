package luks

import (
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Info describes a volume's header without secrets (no salts, digests or
// key material): what `vdisk luks dump` prints. Its JSON form is stable.
type Info struct {
	Version   int    `json:"version"`
	UUID      string `json:"uuid"`
	Label     string `json:"label,omitempty"`
	Subsystem string `json:"subsystem,omitempty"`
	// Epoch is the LUKS2 header's sequence id.
	Epoch uint64 `json:"epoch,omitempty"`
	// MetadataSize and KeyslotsSize are the LUKS2 areas' sizes in bytes.
	MetadataSize int64 `json:"metadata_size,omitempty"`
	KeyslotsSize int64 `json:"keyslots_size,omitempty"`
	// HeaderCopy is "secondary" when the primary LUKS2 header is damaged
	// or older, "primary" otherwise; empty for LUKS1.
	HeaderCopy   string        `json:"header_copy,omitempty"`
	Flags        []string      `json:"flags,omitempty"`
	Requirements []string      `json:"requirements,omitempty"`
	Segments     []SegmentInfo `json:"segments"`
	Keyslots     []KeyslotInfo `json:"keyslots"`
	Tokens       []TokenInfo   `json:"tokens"`
	Digests      []DigestInfo  `json:"digests"`
}

// SegmentInfo describes a data segment.
type SegmentInfo struct {
	ID     int    `json:"id"`
	Type   string `json:"type"`
	Offset int64  `json:"offset"`
	// Size is "dynamic" (to the end of the device) or a byte count.
	Size       string   `json:"size"`
	Cipher     string   `json:"cipher"`
	SectorSize int      `json:"sector_size"`
	IVTweak    uint64   `json:"iv_tweak,omitempty"`
	Integrity  string   `json:"integrity,omitempty"`
	Flags      []string `json:"flags,omitempty"`
}

// KeyslotInfo describes an active keyslot.
type KeyslotInfo struct {
	ID   int    `json:"id"`
	Type string `json:"type"`
	// KeySize is the volume key's length in bytes.
	KeySize int `json:"key_size"`
	// Priority is "ignore", "normal" or "high" (LUKS2).
	Priority    string `json:"priority,omitempty"`
	KDF         KDF    `json:"kdf"`
	AFStripes   int    `json:"af_stripes"`
	AFHash      string `json:"af_hash"`
	AreaOffset  int64  `json:"area_offset"`
	AreaSize    int64  `json:"area_size"`
	AreaCipher  string `json:"area_cipher"`
	AreaKeySize int    `json:"area_key_size"`
}

// TokenInfo describes a LUKS2 token. Tokens are listed, never used: unlock
// with a passphrase or key file.
type TokenInfo struct {
	ID       int    `json:"id"`
	Type     string `json:"type"`
	Keyslots []int  `json:"keyslots"`
}

// DigestInfo describes a volume key digest.
type DigestInfo struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Hash       string `json:"hash"`
	Iterations uint32 `json:"iterations"`
	Keyslots   []int  `json:"keyslots"`
	Segments   []int  `json:"segments"`
}

func atois(ss []string) []int {
	out := make([]int, 0, len(ss))
	for _, s := range ss {
		n, _ := strconv.Atoi(s) // validated at parse
		out = append(out, n)
	}
	return out
}

// Info returns the description of v's header.
func (v *Volume) Info() Info {
	if h := v.v1; h != nil {
		in := Info{Version: 1, UUID: h.uuid, Tokens: []TokenInfo{}}
		in.Segments = []SegmentInfo{{Type: "crypt", Offset: int64(h.payloadOffset) * sectorSize, Size: "dynamic",
			Cipher: h.cipherSpec(), SectorSize: sectorSize}}
		act := v.activeSlots()
		in.Digests = []DigestInfo{{Type: "pbkdf2", Hash: h.hashSpec, Iterations: h.mkDigestIter, Keyslots: act, Segments: []int{0}}}
		in.Keyslots = []KeyslotInfo{}
		for _, s := range v.slots() {
			in.Keyslots = append(in.Keyslots, KeyslotInfo{ID: s.id, Type: "luks1", KeySize: s.keySize, KDF: s.kdf,
				AFStripes: s.stripes, AFHash: s.afHash, AreaOffset: s.areaOffset, AreaSize: afSize(s.keySize, s.stripes),
				AreaCipher: s.areaCipher, AreaKeySize: s.areaKeySize})
		}
		return in
	}
	m := v.meta
	in := Info{Version: 2, UUID: v.v2.uuid, Label: v.v2.label, Subsystem: v.v2.subsystem, Epoch: v.v2.seqid,
		MetadataSize: v.v2.hdrSize, KeyslotsSize: int64(m.config.KeyslotsSize), HeaderCopy: "primary",
		Flags: m.config.Flags, Segments: []SegmentInfo{}, Keyslots: []KeyslotInfo{}, Tokens: []TokenInfo{}, Digests: []DigestInfo{}}
	if v.secondary {
		in.HeaderCopy = "secondary"
	}
	if r := m.config.Requirements; r != nil {
		in.Requirements = r.Mandatory
	}
	for _, id := range ids(m.segments) {
		s := m.segments[id]
		si := SegmentInfo{ID: id, Type: s.Type, Offset: int64(s.Offset), Size: s.Size, Cipher: s.Encryption,
			SectorSize: s.SectorSize, IVTweak: uint64(s.IVTweak), Flags: s.Flags}
		if len(s.Integrity) > 0 && string(s.Integrity) != "null" {
			si.Integrity = truncate(s.Integrity)
		}
		in.Segments = append(in.Segments, si)
	}
	for _, id := range ids(m.keyslots) {
		ks := m.keyslots[id]
		prio := "normal"
		if ks.Priority != nil {
			prio = map[int]string{0: "ignore", 2: "high"}[*ks.Priority]
			if prio == "" {
				prio = "normal"
			}
		}
		in.Keyslots = append(in.Keyslots, KeyslotInfo{ID: id, Type: ks.Type, KeySize: ks.KeySize, Priority: prio,
			KDF: ks.KDF.kdf(), AFStripes: ks.AF.Stripes, AFHash: ks.AF.Hash, AreaOffset: int64(ks.Area.Offset),
			AreaSize: int64(ks.Area.Size), AreaCipher: ks.Area.Encryption, AreaKeySize: ks.Area.KeySize})
	}
	for _, id := range ids(m.tokens) {
		in.Tokens = append(in.Tokens, TokenInfo{ID: id, Type: m.tokens[id].Type, Keyslots: atois(m.tokens[id].Keyslots)})
	}
	for _, id := range ids(m.digests) {
		d := m.digests[id]
		in.Digests = append(in.Digests, DigestInfo{ID: id, Type: d.Type, Hash: d.Hash, Iterations: d.Iterations,
			Keyslots: atois(d.Keyslots), Segments: atois(d.Segments)})
	}
	return in
}

// WriteText writes in as the text `vdisk luks dump` prints.
func (in Info) WriteText(w io.Writer) error {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("LUKS header information\nVersion:       %d\n", in.Version)
	if in.Version == 2 {
		p("Epoch:         %d\nMetadata area: %d bytes\nKeyslots area: %d bytes\nHeader copy:   %s\n",
			in.Epoch, in.MetadataSize, in.KeyslotsSize, in.HeaderCopy)
	}
	p("UUID:          %s\n", in.UUID)
	if in.Version == 2 {
		p("Label:         %s\nSubsystem:     %s\nFlags:         %s\n", orNone(in.Label), orNone(in.Subsystem), orNone(strings.Join(in.Flags, " ")))
		if len(in.Requirements) > 0 {
			p("Requirements:  %s\n", strings.Join(in.Requirements, " "))
		}
	}
	p("\nData segments:\n")
	for _, s := range in.Segments {
		size := s.Size
		if size == "dynamic" {
			size = "(whole device)"
		} else {
			size += " bytes"
		}
		p("  %d: %s\n\toffset: %d bytes\n\tlength: %s\n\tcipher: %s\n\tsector: %d bytes\n", s.ID, s.Type, s.Offset, size, s.Cipher, s.SectorSize)
		if s.IVTweak != 0 {
			p("\tiv tweak: %d\n", s.IVTweak)
		}
		if s.Integrity != "" {
			p("\tintegrity: %s\n", s.Integrity)
		}
	}
	p("\nKeyslots:\n")
	for _, k := range in.Keyslots {
		p("  %d: %s\n\tKey:        %d bits\n", k.ID, k.Type, k.KeySize*8)
		if k.Priority != "" {
			p("\tPriority:   %s\n", k.Priority)
		}
		p("\tCipher:     %s\n\tCipher key: %d bits\n\tPBKDF:      %s\n", k.AreaCipher, k.AreaKeySize*8, k.KDF.Type)
		if k.KDF.Type == "pbkdf2" {
			p("\tHash:       %s\n\tIterations: %d\n", k.KDF.Hash, k.KDF.Iterations)
		} else {
			p("\tTime cost:  %d\n\tMemory:     %d KiB\n\tThreads:    %d\n", k.KDF.Time, k.KDF.MemoryKiB, k.KDF.Parallel)
		}
		p("\tAF stripes: %d\n\tAF hash:    %s\n\tArea:       %d bytes at %d\n", k.AFStripes, k.AFHash, k.AreaSize, k.AreaOffset)
	}
	p("\nTokens:\n")
	for _, t := range in.Tokens {
		p("  %d: %s (not used by vdisk)\n\tKeyslots: %v\n", t.ID, t.Type, t.Keyslots)
	}
	p("\nDigests:\n")
	for _, d := range in.Digests {
		p("  %d: %s\n\tHash:       %s\n\tIterations: %d\n\tKeyslots:   %v\n\tSegments:   %v\n", d.ID, d.Type, d.Hash, d.Iterations, d.Keyslots, d.Segments)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}
