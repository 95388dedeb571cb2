package vhdx

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"strings"
)

// guid is a GUID in its on-disk (Microsoft, mixed-endian) byte order.
type guid [16]byte

// mustGUID parses "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" into on-disk order.
func mustGUID(s string) guid {
	g, err := parseGUID(s)
	if err != nil {
		panic(err)
	}
	return g
}

// parseGUID parses a GUID string, with or without braces.
func parseGUID(s string) (guid, error) {
	var g guid
	h := strings.ReplaceAll(strings.Trim(s, "{}"), "-", "")
	b, err := hex.DecodeString(h)
	if err != nil || len(b) != 16 {
		return g, fmt.Errorf("vhdx: bad GUID %q", s)
	}
	binary.LittleEndian.PutUint32(g[0:], binary.BigEndian.Uint32(b[0:]))
	binary.LittleEndian.PutUint16(g[4:], binary.BigEndian.Uint16(b[4:]))
	binary.LittleEndian.PutUint16(g[6:], binary.BigEndian.Uint16(b[6:]))
	copy(g[8:], b[8:])
	return g, nil
}

// String formats g the way parent locators store it: {xxxxxxxx-...}.
func (g guid) String() string {
	return fmt.Sprintf("{%08x-%04x-%04x-%x-%x}", binary.LittleEndian.Uint32(g[0:]), binary.LittleEndian.Uint16(g[4:]),
		binary.LittleEndian.Uint16(g[6:]), g[8:10], g[10:])
}

// newGUID returns a random (version 4) GUID.
func newGUID() guid {
	var g guid
	rand.Read(g[:])
	g[7] = g[7]&0x0f | 0x40
	g[8] = g[8]&0x3f | 0x80
	return g
}

// Known GUIDs (MS-VHDX).
var (
	regionBAT      = mustGUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
	regionMetadata = mustGUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")

	metaFileParams   = mustGUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
	metaDiskSize     = mustGUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
	metaPage83       = mustGUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
	metaLogicalSS    = mustGUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
	metaPhysicalSS   = mustGUID("CDA348C7-445D-4471-9CC9-E9885251C556")
	metaParentLoc    = mustGUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
	parentTypeVHDX   = mustGUID("B04AEFB7-D19E-4A81-B789-25B8E9445913")
	castagnoli       = crc32.MakeTable(crc32.Castagnoli)
	signatureFileID  = []byte("vhdxfile")
	signatureMetaTab = []byte("metadata")
)

// checksum is the CRC-32C of b with the four bytes at at taken as zero.
func checksum(b []byte, at int) uint32 {
	var z [4]byte
	c := crc32.Update(0, castagnoli, b[:at])
	c = crc32.Update(c, castagnoli, z[:])
	return crc32.Update(c, castagnoli, b[at+4:])
}
