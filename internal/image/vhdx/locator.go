package vhdx

import (
	"encoding/binary"
	"unicode/utf16"
)

// maxLocatorPairs bounds the key/value pairs of a parent locator.
const maxLocatorPairs = 256

// parseLocator parses a parent locator item into its key/value pairs.
func parseLocator(b []byte) (map[string]string, error) {
	le := binary.LittleEndian
	if len(b) < 20 {
		return nil, corruptf("parent locator of %d bytes", len(b))
	}
	var typ guid
	copy(typ[:], b)
	if typ != parentTypeVHDX {
		return nil, corruptf("parent locator type %s is not VHDX", typ)
	}
	n := int(le.Uint16(b[18:]))
	if n > maxLocatorPairs || 20+12*n > len(b) {
		return nil, corruptf("parent locator has %d entries in %d bytes", n, len(b))
	}
	out := map[string]string{}
	str := func(off, length int64) (string, bool) {
		if off <= 0 || length <= 0 || length%2 != 0 || off > int64(len(b)) || length > int64(len(b))-off {
			return "", false
		}
		u := make([]uint16, length/2)
		for i := range u {
			u[i] = le.Uint16(b[off+2*int64(i):])
		}
		return string(utf16.Decode(u)), true
	}
	for i := range n {
		e := b[20+12*i:]
		k, ok1 := str(int64(le.Uint32(e)), int64(le.Uint16(e[8:])))
		v, ok2 := str(int64(le.Uint32(e[4:])), int64(le.Uint16(e[10:])))
		if !ok1 || !ok2 {
			return nil, corruptf("parent locator entry %d lies outside the locator", i)
		}
		out[k] = v
	}
	return out, nil
}

// encodeLocator builds a parent locator item from key/value pairs.
func encodeLocator(kv [][2]string) []byte {
	le := binary.LittleEndian
	head := make([]byte, 20+12*len(kv))
	copy(head, parentTypeVHDX[:])
	le.PutUint16(head[18:], uint16(len(kv)))
	var data []byte
	enc := func(s string) (uint32, uint16) {
		off := uint32(len(head) + len(data))
		for _, c := range utf16.Encode([]rune(s)) {
			data = le.AppendUint16(data, c)
		}
		return off, uint16(uint32(len(head)+len(data)) - off)
	}
	for i, p := range kv {
		ko, kl := enc(p[0])
		vo, vl := enc(p[1])
		e := head[20+12*i:]
		le.PutUint32(e, ko)
		le.PutUint32(e[4:], vo)
		le.PutUint16(e[8:], kl)
		le.PutUint16(e[10:], vl)
	}
	return append(head, data...)
}
