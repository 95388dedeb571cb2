package iso

import (
	"encoding/binary"
	"fmt"
	"io"
	"strings"

	"vdisk/internal/blockdev"
)

// ISO 9660 (ECMA-119) layout.
const (
	// BlockSize is the sector size of CD-ROM media, the device's logical
	// block size.
	BlockSize = 2048
	// Media is the kind of medium an ISO image is.
	Media = "cdrom"
	// MagicOffset is where the first volume descriptor's identifier,
	// "CD001", starts: byte 1 of sector 16. Probing needs this many bytes
	// plus five.
	MagicOffset = 16*BlockSize + 1

	firstDescriptor = 16 * BlockSize
	// maxDescriptors bounds the volume descriptor set walked before its
	// terminator.
	maxDescriptors = 64

	typePrimary    = 1
	typeTerminator = 255
)

var magic = []byte("CD001")

// Volume is what the primary volume descriptor says about an image.
type Volume struct {
	// ID is the volume identifier (the label mount shows).
	ID string
	// BlockSize is the logical block size recorded (2048 on every CD).
	BlockSize int64
	// Blocks is the volume space size in logical blocks.
	Blocks int64
}

// Size is the volume's size in bytes.
func (v *Volume) Size() int64 { return v.Blocks * v.BlockSize }

// probe matches "CD001" in the first volume descriptor; header must reach
// past MagicOffset+5.
func probe(header []byte) bool {
	return len(header) >= MagicOffset+len(magic) && string(header[MagicOffset:MagicOffset+len(magic)]) == string(magic)
}

// corruptf returns an error wrapping blockdev.ErrCorrupt.
func corruptf(format string, a ...any) error {
	return fmt.Errorf("iso: "+format+": %w", append(a, blockdev.ErrCorrupt)...)
}

// readVolume walks the volume descriptor set of r (fsize bytes) and
// returns its primary volume descriptor.
func readVolume(r io.ReaderAt, fsize int64) (*Volume, error) {
	d := make([]byte, BlockSize)
	if fsize < firstDescriptor+BlockSize {
		return nil, fmt.Errorf("iso: file of %d bytes is too short for a volume descriptor: %w", fsize, ErrNotISO)
	}
	var vol *Volume
	for i := range int64(maxDescriptors) {
		off := firstDescriptor + i*BlockSize
		if off+BlockSize > fsize {
			return nil, corruptf("volume descriptor set runs past the end of the file without a terminator")
		}
		if _, err := r.ReadAt(d, off); err != nil {
			return nil, fmt.Errorf("iso: read volume descriptor %d: %w", i, err)
		}
		if string(d[1:6]) != string(magic) {
			if i == 0 {
				return nil, ErrNotISO
			}
			return nil, corruptf("volume descriptor %d has no CD001 identifier", i)
		}
		switch d[0] {
		case typeTerminator:
			if vol == nil {
				return nil, corruptf("no primary volume descriptor")
			}
			return vol, nil
		case typePrimary:
			if vol != nil {
				continue
			}
			bs := int64(binary.LittleEndian.Uint16(d[128:]))
			if bs != 512 && bs != 1024 && bs != 2048 {
				return nil, corruptf("logical block size %d (want 512, 1024 or 2048)", bs)
			}
			if be := int64(binary.BigEndian.Uint16(d[130:])); be != bs {
				return nil, corruptf("logical block size %d little-endian, %d big-endian", bs, be)
			}
			blocks := int64(binary.LittleEndian.Uint32(d[80:]))
			if be := int64(binary.BigEndian.Uint32(d[84:])); be != blocks {
				return nil, corruptf("volume space size %d little-endian, %d big-endian", blocks, be)
			}
			vol = &Volume{ID: strings.TrimRight(string(d[40:72]), " \x00"), BlockSize: bs, Blocks: blocks}
			if vol.Size() > fsize {
				return nil, corruptf("volume of %d bytes in a file of %d: truncated", vol.Size(), fsize)
			}
		}
	}
	return nil, corruptf("no volume descriptor set terminator in the first %d descriptors", maxDescriptors)
}
