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
