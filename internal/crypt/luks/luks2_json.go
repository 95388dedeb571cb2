package luks

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
)

// Bounds on LUKS2 metadata.
const (
	luks2MaxKeyslots = 32 // LUKS2_KEYSLOTS_MAX
	luks2MaxTokens   = 32 // LUKS2_TOKENS_MAX
	luks2MaxObjects  = 64 // segments or digests
	luks2MaxDigest   = 64 // bytes
	luks2MaxSalt     = 64 // bytes
	// luks2MaxKeyslotsSize is the largest keyslots area, as cryptsetup's
	// LUKS2_MAX_KEYSLOTS_SIZE (which it refuses beyond when reading too).
	luks2MaxKeyslotsSize = 128 << 20
	// luks2MaxList bounds every list of strings: the ids in a digest or
	// token, flags, requirements.
	luks2MaxList = luks2MaxObjects
)

// objectMap is a JSON object of objects (keyslots, tokens, segments,
// digests) decoded with at most luks2MaxObjects distinct members, refused
// as soon as one more is read: a 4 MiB JSON area could otherwise fill a
// map with half a million members before they are counted.
type objectMap map[string]json.RawMessage

func (m *objectMap) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*m = nil
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return fmt.Errorf("want an object, have %s", truncate(b))
	}
	out := objectMap{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		k, _ := t.(string) // object keys are strings
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return err
		}
		if _, dup := out[k]; !dup && len(out) == luks2MaxObjects {
			return fmt.Errorf("more than %d objects", luks2MaxObjects)
		}
		out[k] = v
	}
	*m = out
	return nil
}

// u64 is a LUKS2 JSON number stored as a decimal string ("16777216").
type u64 int64

func (n *u64) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a decimal string, have %s", truncate(b))
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 || s != strconv.FormatInt(v, 10) {
		return fmt.Errorf("bad number %q", truncate([]byte(s)))
	}
	*n = u64(v)
	return nil
}

func (n u64) MarshalJSON() ([]byte, error) {
	return json.Marshal(strconv.FormatInt(int64(n), 10))
}

func truncate(b []byte) string {
	const max = 32
	if len(b) > max {
		return string(b[:max]) + "…"
	}
	return string(b)
}

// strList is a JSON list of strings decoded with at most luks2MaxList
// entries, refused as soon as one more is read (a 4 MiB list of "0" would
// otherwise make a million strings).
type strList []string

func (l *strList) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*l = nil
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != json.Delim('[') {
		return fmt.Errorf("want a list, have %s", truncate(b))
	}
	out := strList{}
	for dec.More() {
		if len(out) == luks2MaxList {
			return fmt.Errorf("a list of more than %d strings", luks2MaxList)
		}
		t, err := dec.Token()
		if err != nil {
			return err
		}
		str, ok := t.(string)
		if !ok {
			return fmt.Errorf("want a list of strings, have %v in it", t)
		}
		out = append(out, str)
	}
	*l = out
	return nil
}

// l2Keyslot is a keyslot object.
type l2Keyslot struct {
	Type     string `json:"type"`
	KeySize  int    `json:"key_size"`
	AF       l2AF   `json:"af"`
	Area     l2Area `json:"area"`
	KDF      l2KDF  `json:"kdf"`
	Priority *int   `json:"priority,omitempty"`
}

type l2AF struct {
	Type    string `json:"type"`
	Stripes int    `json:"stripes"`
	Hash    string `json:"hash"`
}

type l2Area struct {
	Type       string `json:"type"`
	Offset     u64    `json:"offset"`
	Size       u64    `json:"size"`
	Encryption string `json:"encryption"`
	KeySize    int    `json:"key_size"`
}

type l2KDF struct {
	Type       string `json:"type"`
	Hash       string `json:"hash,omitempty"`
	Iterations uint32 `json:"iterations,omitempty"`
	Time       uint32 `json:"time,omitempty"`
	Memory     uint32 `json:"memory,omitempty"`
	CPUs       uint32 `json:"cpus,omitempty"`
	Salt       []byte `json:"salt"`
}

func (k l2KDF) kdf() KDF {
	return KDF{Type: k.Type, Hash: k.Hash, Iterations: k.Iterations, Time: k.Time, MemoryKiB: k.Memory, Parallel: k.CPUs}
}

// l2Segment is a segment object.
type l2Segment struct {
	Type       string          `json:"type"`
	Offset     u64             `json:"offset"`
	Size       string          `json:"size"` // "dynamic" or a decimal number
	IVTweak    u64             `json:"iv_tweak"`
	Encryption string          `json:"encryption"`
	SectorSize int             `json:"sector_size"`
	Integrity  json.RawMessage `json:"integrity,omitempty"`
	Flags      strList         `json:"flags,omitempty"`
}

// l2Digest is a digest object.
type l2Digest struct {
	Type       string  `json:"type"`
	Keyslots   strList `json:"keyslots"`
	Segments   strList `json:"segments"`
	Hash       string  `json:"hash"`
	Iterations uint32  `json:"iterations"`
	Salt       []byte  `json:"salt"`
	Digest     []byte  `json:"digest"`
}

// l2Token is what this package reads of a token object.
type l2Token struct {
	Type     string  `json:"type"`
	Keyslots strList `json:"keyslots"`
}

// l2Config is the config object.
type l2Config struct {
	JSONSize     u64     `json:"json_size"`
	KeyslotsSize u64     `json:"keyslots_size"`
	Flags        strList `json:"flags,omitempty"`
	Requirements *struct {
		Mandatory strList `json:"mandatory"`
	} `json:"requirements,omitempty"`
}

// luks2Meta is the JSON metadata: each object both raw (so that what this
// package does not understand is written back unchanged) and decoded.
type luks2Meta struct {
	rawKeyslots map[string]json.RawMessage
	rawTokens   map[string]json.RawMessage
	rawSegments map[string]json.RawMessage
	rawConfig   json.RawMessage

	keyslots map[int]*l2Keyslot
	tokens   map[int]*l2Token
	segments map[int]*l2Segment
	digests  map[int]*l2Digest
	config   l2Config
}

// parseLUKS2JSON decodes and checks the JSON area of a header of hdrSize
// bytes: NUL-terminated JSON text, then zeroes.
func parseLUKS2JSON(area []byte, hdrSize int64) (*luks2Meta, error) {
	end := bytes.IndexByte(area, 0)
	if end < 0 {
		return nil, fmt.Errorf("JSON area is not NUL-terminated: %w", ErrCorrupt)
	}
	var top struct {
		Keyslots, Tokens, Segments, Digests json.RawMessage
		Config                              json.RawMessage
	}
	if err := json.Unmarshal(area[:end], &top); err != nil {
		return nil, fmt.Errorf("JSON metadata: %v: %w", err, ErrCorrupt)
	}
	var sections [4]objectMap
	for i, raw := range []json.RawMessage{top.Keyslots, top.Tokens, top.Segments, top.Digests} {
		if raw == nil {
			continue
		}
		if err := json.Unmarshal(raw, &sections[i]); err != nil {
			return nil, fmt.Errorf("JSON metadata: %s: %v: %w", []string{"keyslots", "tokens", "segments", "digests"}[i], err, ErrCorrupt)
		}
	}
	keyslots, tokens, segments, digests := sections[0], sections[1], sections[2], sections[3]
	if keyslots == nil || tokens == nil || segments == nil || digests == nil || top.Config == nil {
		return nil, fmt.Errorf("JSON metadata lacks keyslots, tokens, segments, digests or config: %w", ErrCorrupt)
	}
	m := &luks2Meta{
		rawKeyslots: keyslots, rawTokens: tokens, rawSegments: segments, rawConfig: top.Config,
	}
	var err error
	if m.keyslots, err = decodeObjects[l2Keyslot]("keyslot", keyslots, luks2MaxKeyslots); err != nil {
		return nil, err
	}
	if m.tokens, err = decodeObjects[l2Token]("token", tokens, luks2MaxTokens); err != nil {
		return nil, err
	}
	if m.segments, err = decodeObjects[l2Segment]("segment", segments, luks2MaxObjects); err != nil {
		return nil, err
	}
	if m.digests, err = decodeObjects[l2Digest]("digest", digests, luks2MaxObjects); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(top.Config, &m.config); err != nil {
		return nil, fmt.Errorf("config: %v: %w", err, ErrCorrupt)
	}
	if err := m.validate(hdrSize); err != nil {
		return nil, err
	}
	return m, nil
}

// decodeObjects decodes a JSON object of objects keyed by decimal ids below
// limit.
func decodeObjects[T any](what string, raw objectMap, limit int) (map[int]*T, error) {
	out := make(map[int]*T, len(raw))
	for k, v := range raw {
		id, err := strconv.Atoi(k)
		if err != nil || id < 0 || id >= limit || k != strconv.Itoa(id) {
			return nil, fmt.Errorf("%s id %q: %w", what, truncate([]byte(k)), ErrCorrupt)
		}
		t := new(T)
		if err := json.Unmarshal(v, t); err != nil {
			return nil, fmt.Errorf("%s %d: %v: %w", what, id, err, ErrCorrupt)
		}
		out[id] = t
	}
	return out, nil
}

// validate checks that the metadata holds together within a header of
// hdrSize bytes. Features this package lacks are not errors here (Dump
// shows them); usable refuses them.
func (m *luks2Meta) validate(hdrSize int64) error {
	c := m.config
	if int64(c.JSONSize) != hdrSize-luks2BinSize {
		return fmt.Errorf("json_size %d in a %d-byte header: %w", c.JSONSize, hdrSize, ErrCorrupt)
	}
	areaStart, areaEnd := 2*hdrSize, 2*hdrSize+int64(c.KeyslotsSize)
	if c.KeyslotsSize%luks1Align != 0 || c.KeyslotsSize > luks2MaxKeyslotsSize {
		return fmt.Errorf("keyslots_size %d (a multiple of 4096, at most %d): %w", c.KeyslotsSize, luks2MaxKeyslotsSize, ErrCorrupt)
	}
	for id, ks := range m.keyslots {
		if ks.Type != "luks2" {
			continue // reencrypt and others: refused by usable
		}
		a := ks.Area
		if ks.KeySize < 1 || ks.KeySize > maxKeySize || a.KeySize < 1 || a.KeySize > maxKeySize ||
			ks.AF.Stripes < 1 || ks.AF.Stripes > afStripes {
			return fmt.Errorf("keyslot %d: key size %d, area key size %d, stripes %d: %w",
				id, ks.KeySize, a.KeySize, ks.AF.Stripes, ErrCorrupt)
		}
		if int64(a.Offset) < areaStart || int64(a.Size) > areaEnd-int64(a.Offset) ||
			int64(a.Size) < afSize(ks.KeySize, ks.AF.Stripes) || a.Offset%sectorSize != 0 {
			return fmt.Errorf("keyslot %d: area [%d, +%d) outside the keyslots area [%d, %d) or too small: %w",
				id, a.Offset, a.Size, areaStart, areaEnd, ErrCorrupt)
		}
		if len(ks.KDF.Salt) == 0 || len(ks.KDF.Salt) > luks2MaxSalt {
			return fmt.Errorf("keyslot %d: %d-byte kdf salt: %w", id, len(ks.KDF.Salt), ErrCorrupt)
		}
		if err := ks.KDF.kdf().validate(); err != nil && ks.KDF.Type != "" && isCorrupt(err) {
			return fmt.Errorf("keyslot %d: %w", id, err)
		}
		for oid, o := range m.keyslots {
			if oid != id && o.Type == "luks2" && a.Offset < o.Area.Offset+o.Area.Size && o.Area.Offset < a.Offset+a.Size {
				return fmt.Errorf("keyslots %d and %d overlap: %w", id, oid, ErrCorrupt)
			}
		}
	}
	for id, s := range m.segments {
		if s.Offset%sectorSize != 0 || s.SectorSize < 512 || s.SectorSize > 4096 || s.SectorSize&(s.SectorSize-1) != 0 {
			return fmt.Errorf("segment %d: offset %d, sector size %d: %w", id, s.Offset, s.SectorSize, ErrCorrupt)
		}
		if s.Size != "dynamic" {
			n, err := strconv.ParseInt(s.Size, 10, 64)
			if err != nil || n < 0 || n%int64(s.SectorSize) != 0 {
				return fmt.Errorf("segment %d: size %q: %w", id, truncate([]byte(s.Size)), ErrCorrupt)
			}
		}
	}
	for id, d := range m.digests {
		if len(d.Digest) == 0 || len(d.Digest) > luks2MaxDigest || len(d.Salt) == 0 || len(d.Salt) > luks2MaxSalt {
			return fmt.Errorf("digest %d: %d-byte digest, %d-byte salt: %w", id, len(d.Digest), len(d.Salt), ErrCorrupt)
		}
		if err := checkRefs(d.Keyslots, m.keyslots); err != nil {
			return fmt.Errorf("digest %d: keyslot %w", id, err)
		}
		if err := checkRefs(d.Segments, m.segments); err != nil {
			return fmt.Errorf("digest %d: segment %w", id, err)
		}
	}
	for id, t := range m.tokens {
		if err := checkRefs(t.Keyslots, m.keyslots); err != nil {
			return fmt.Errorf("token %d: keyslot %w", id, err)
		}
	}
	return nil
}

func isCorrupt(err error) bool { return err != nil && !isUnsupported(err) }

// checkRefs checks that every id in refs names an object of objs.
func checkRefs[T any](refs []string, objs map[int]*T) error {
	for _, r := range refs {
		id, err := strconv.Atoi(r)
		if err != nil || objs[id] == nil || r != strconv.Itoa(id) {
			return fmt.Errorf("%q does not exist: %w", truncate([]byte(r)), ErrCorrupt)
		}
	}
	return nil
}

// marshal encodes the metadata as compact JSON.
func (m *luks2Meta) marshal() ([]byte, error) {
	digests := make(map[string]*l2Digest, len(m.digests))
	for id, d := range m.digests {
		digests[strconv.Itoa(id)] = d
	}
	return json.Marshal(map[string]any{
		"keyslots": m.rawKeyslots,
		"tokens":   m.rawTokens,
		"segments": m.rawSegments,
		"digests":  digests,
		"config":   m.rawConfig,
	})
}

// ids returns the sorted keys of objs.
func ids[T any](objs map[int]T) []int { return slices.Sorted(maps.Keys(objs)) }
