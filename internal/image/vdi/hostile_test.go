package vdi

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
	"vdisk/internal/image/imagetest"
)

// TestHostile opens damaged and malicious images: each is refused with an
// error naming the problem, without a large allocation, and Info and
// Check refuse it too.
func TestHostile(t *testing.T) {
	le := binary.LittleEndian
	const bmap = headerSize
	tests := []struct {
		name        string
		mutate      func(b []byte) []byte
		want        string
		corrupt     bool
		unsupported bool
		size        int64 // the file's length, when more than the bytes
	}{
		{name: "version", mutate: func(b []byte) []byte { le.PutUint32(b[offVersion:], 0x00020000); return b }, want: "version 2.0", unsupported: true},
		{name: "type", mutate: func(b []byte) []byte { le.PutUint32(b[offType:], 9); return b }, want: "image type 9", corrupt: true},
		{name: "differencing", mutate: func(b []byte) []byte { le.PutUint32(b[offType:], typeDiff); return b }, want: "differencing", unsupported: true},
		{name: "sector-size", mutate: func(b []byte) []byte { le.PutUint32(b[offSectorSize:], 4096); return b }, want: "sector size", corrupt: true},
		{name: "block-size", mutate: func(b []byte) []byte { le.PutUint32(b[offBlockSize:], 1000); return b }, want: "block size 1000", corrupt: true},
		{name: "huge-disk", mutate: func(b []byte) []byte { le.PutUint64(b[offDiskSize:], 1<<62); return b }, want: "does not fit", corrupt: true},
		{name: "too-many-blocks", mutate: func(b []byte) []byte { le.PutUint32(b[offBlocks:], 0xffffffff); return b }, want: "more than the VDI limit", corrupt: true},
		{name: "blocks-for-a-small-disk", mutate: func(b []byte) []byte { le.PutUint32(b[offBlocks:], 0x3ffffff0); return b }, want: "1073741808 blocks (blocks in image) is more than the 3", corrupt: true},
		{name: "terabytes-in-1MiB", mutate: func(b []byte) []byte {
			// 4 TiB in 1 MiB blocks: a block map of 16 MiB in a 1 MiB file.
			le.PutUint64(b[offDiskSize:], 4<<40)
			le.PutUint32(b[offBlocks:], 4<<20)
			return append(b, make([]byte, 1<<20)...)[:1<<20]
		}, want: "block map of 4194304 entries at 0x200 outside the file of 1048576 bytes", corrupt: true},
		{name: "table-beyond-vdisk", mutate: func(b []byte) []byte {
			// 9 TiB in 1 MiB blocks: a block map of 36 MiB, in a sparse
			// file of 48 MiB that holds it.
			le.PutUint64(b[offDiskSize:], 9<<40)
			le.PutUint32(b[offBlocks:], 9<<20)
			return b
		}, size: 48 << 20, want: "block map of 9437184 blocks (blocks in image) is larger than the 32 MiB vdisk reads", unsupported: true},
		{name: "data-overlaps-bmap", mutate: func(b []byte) []byte { le.PutUint32(b[offData:], 0x200); return b }, want: "overlaps the block map", corrupt: true},
		{name: "entry-beyond", mutate: func(b []byte) []byte { le.PutUint32(b[bmap:], 77); return b }, want: "beyond the 3 blocks", corrupt: true},
		{name: "entry-shared", mutate: func(b []byte) []byte { copy(b[bmap+4:bmap+8], b[bmap:bmap+4]); return b }, want: "share the block", corrupt: true},
		{name: "truncated", mutate: func(b []byte) []byte { return b[:len(b)-5000] }, want: "truncated", corrupt: true},
		{name: "parent-link", mutate: func(b []byte) []byte { b[offUUIDParent] = 1; return b }, want: "parent", unsupported: true},
		{name: "not-vdi", mutate: func(b []byte) []byte { return []byte(strings.Repeat("y", 1024)) }},
		{name: "short", mutate: func(b []byte) []byte { return b[:100] }},
	}
	orig := smallImage(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := imagetest.Refused(t, Name, tc.mutate(append([]byte(nil), orig...)), tc.size)
			switch {
			case tc.corrupt && !errors.Is(err, blockdev.ErrCorrupt):
				t.Errorf("error does not wrap ErrCorrupt: %v", err)
			case tc.unsupported && !errors.Is(err, image.ErrUnsupported):
				t.Errorf("error does not wrap ErrUnsupported: %v", err)
			case !tc.corrupt && !tc.unsupported && (!errors.Is(err, ErrNotVDI) || !errors.Is(err, image.ErrWrongFormat)):
				t.Errorf("error does not wrap ErrNotVDI and image.ErrWrongFormat: %v", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

// FuzzOpen opens arbitrary bytes as a VDI (an in-memory file): it must
// never panic, hang or allocate without bound, and what opens must read
// and describe its extents without error.
func FuzzOpen(f *testing.F) {
	imagetest.FuzzFormat(f, Name, "testdata/*.vdi", smallImage(f))
}
