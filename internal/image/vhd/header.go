package vhd

import (
	"bytes"
	"encoding/binary"
	"net/url"
	"strings"
	"unicode/utf16"
)

// Parent locator platform codes.
const (
	platformW2ru = 0x57327275 // "W2ru": relative path, UTF-16LE
	platformW2ku = 0x57326b75 // "W2ku": absolute path, UTF-16LE
	platformMacX = 0x4d616358 // "MacX": file:// URL, UTF-8
)

// maxLocatorLen bounds the bytes read for one parent locator.
const maxLocatorLen = 64 << 10

// locator is one parent locator entry of the dynamic disk header.
type locator struct {
	platform uint32
	space    uint32 // sectors (or, from some writers, bytes) reserved
	length   uint32 // bytes of the path
	offset   uint64 // where the path is in the file
}

// dynHeader is the dynamic disk header of dynamic and differencing disks.
type dynHeader struct {
	raw             [dynHeaderSize]byte
	tableOffset     uint64
	maxEntries      uint32
	blockSize       uint32
	parentUUID      [16]byte
	parentTimestamp uint32
	parentName      string
	locators        [8]locator
}

// parseDynHeader decodes and verifies a dynamic disk header.
func parseDynHeader(b []byte) (*dynHeader, error) {
	if len(b) < dynHeaderSize || !bytes.Equal(b[:8], dynCookie) {
		return nil, corruptf("dynamic disk header has no cxsparse cookie")
	}
	be := binary.BigEndian
	if got, want := be.Uint32(b[36:]), checksum(b[:dynHeaderSize], 36); got != want {
		return nil, corruptf("dynamic disk header checksum %#08x, computed %#08x", got, want)
	}
	h := &dynHeader{}
	copy(h.raw[:], b)
	h.tableOffset = be.Uint64(b[16:])
	h.maxEntries = be.Uint32(b[28:])
	h.blockSize = be.Uint32(b[32:])
	copy(h.parentUUID[:], b[40:56])
	h.parentTimestamp = be.Uint32(b[56:])
	h.parentName = decodeUTF16(b[64:576], binary.BigEndian)
	for i := range h.locators {
		e := b[576+24*i:]
		h.locators[i] = locator{platform: be.Uint32(e), space: be.Uint32(e[4:]), length: be.Uint32(e[8:]), offset: be.Uint64(e[16:])}
	}
	return h, nil
}

// encode fills raw from the fields and recomputes the checksum.
func (h *dynHeader) encode() []byte {
	b := h.raw[:]
	be := binary.BigEndian
	copy(b[:8], dynCookie)
	be.PutUint64(b[8:], noOffset)
	be.PutUint64(b[16:], h.tableOffset)
	be.PutUint32(b[24:], 0x00010000)
	be.PutUint32(b[28:], h.maxEntries)
	be.PutUint32(b[32:], h.blockSize)
	copy(b[40:56], h.parentUUID[:])
	be.PutUint32(b[56:], h.parentTimestamp)
	clear(b[64:576])
	copy(b[64:576], encodeUTF16(h.parentName, binary.BigEndian))
	for i, l := range h.locators {
		e := b[576+24*i:]
		be.PutUint32(e, l.platform)
		be.PutUint32(e[4:], l.space)
		be.PutUint32(e[8:], l.length)
		be.PutUint32(e[12:], 0)
		be.PutUint64(e[16:], l.offset)
	}
	be.PutUint32(b[36:], checksum(b, 36))
	return b
}

// decodeUTF16 decodes b up to its first NUL character.
func decodeUTF16(b []byte, order binary.ByteOrder) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := order.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}

// encodeUTF16 encodes s without a terminator.
func encodeUTF16(s string, order binary.ByteOrder) []byte {
	u := utf16.Encode([]rune(s))
	b := make([]byte, 2*len(u))
	for i, c := range u {
		order.PutUint16(b[2*i:], c)
	}
	return b
}

// windowsPath turns a Windows path from a parent locator into a slash path:
// backslashes become slashes and a leading ".\" is dropped.
func windowsPath(p string) string {
	p = strings.ReplaceAll(p, `\`, "/")
	return strings.TrimPrefix(p, "./")
}

// locatorPath decodes the path of a parent locator of platform from b:
// "" when it is not usable here (a Windows drive letter, a URL that is
// not file://).
func locatorPath(platform uint32, b []byte) string {
	if platform == platformMacX {
		u, err := url.Parse(string(bytes.TrimRight(b, "\x00")))
		if err != nil || u.Scheme != "file" {
			return ""
		}
		return u.Path
	}
	p := windowsPath(decodeUTF16(b, binary.LittleEndian))
	if len(p) >= 2 && p[1] == ':' {
		return ""
	}
	return p
}

// utf16Len is the length in bytes of s encoded as UTF-16.
func utf16Len(s string) int { return 2 * len(utf16.Encode([]rune(s))) }
