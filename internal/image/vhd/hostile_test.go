package vhd

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
	"vdisk/internal/image/imagetest"
)

// smallImage returns the bytes of a 4 MiB dynamic VHD with 64 KiB blocks
// and two allocated blocks.
func smallImage(t testing.TB) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "small.vhd")
	if err := image.Create(p, image.CreateOptions{Format: Name, Size: 4 << 20, ClusterSize: 64 << 10, Options: map[string]string{"force_size": "on"}}); err != nil {
		t.Fatal(err)
	}
	d, err := image.Open(p, image.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, 3 << 20} {
		if _, err := d.WriteAt([]byte("vdisk vhd test data"), off+100); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// refooter recomputes the checksum of the footer copy at offset 0.
func refooter(b []byte) { binary.BigEndian.PutUint32(b[64:], checksum(b[:footerSize], 64)) }

// reheader recomputes the checksum of the dynamic header at 512.
func reheader(b []byte) {
	h := b[sectorSize : sectorSize+dynHeaderSize]
	binary.BigEndian.PutUint32(h[36:], checksum(h, 36))
}

// TestHostile opens damaged and malicious images: each is refused with an
// error that wraps blockdev.ErrCorrupt (or image.ErrWrongFormat) and names
// the problem, without a large allocation; Info and Check refuse it too.
func TestHostile(t *testing.T) {
	be := binary.BigEndian
	const bat = 3 * sectorSize
	tests := []struct {
		name    string
		mutate  func(b []byte) []byte
		want    string
		notVHD  bool
		corrupt bool
		size    int64 // the file's length, when more than the bytes
	}{
		{name: "footer-checksum", mutate: func(b []byte) []byte { b[45]++; return b }, want: "footer checksum", corrupt: true},
		{name: "header-checksum", mutate: func(b []byte) []byte { b[sectorSize+30]++; return b }, want: "dynamic disk header checksum", corrupt: true},
		{name: "disk-type", mutate: func(b []byte) []byte { be.PutUint32(b[60:], 7); refooter(b); return b }, want: "disk type 7", corrupt: true},
		{name: "absurd-size", mutate: func(b []byte) []byte {
			copy(b[28:], "win ")
			be.PutUint64(b[48:], 1<<60)
			refooter(b)
			return b
		}, want: "2040 GiB", corrupt: true},
		{name: "header-offset", mutate: func(b []byte) []byte { be.PutUint64(b[16:], 1<<40); refooter(b); return b }, want: "dynamic header offset", corrupt: true},
		{name: "block-size", mutate: func(b []byte) []byte { be.PutUint32(b[sectorSize+32:], 3000); reheader(b); return b }, want: "block size 3000", corrupt: true},
		{name: "bat-too-small", mutate: func(b []byte) []byte { be.PutUint32(b[sectorSize+28:], 1); reheader(b); return b }, want: "too small", corrupt: true},
		{name: "bat-huge", mutate: func(b []byte) []byte { be.PutUint32(b[sectorSize+28:], 0xfffffff0); reheader(b); return b },
			want: "BAT of 4294967280 entries (max table entries) is larger than the 64 that 4194304 bytes of 65536-byte blocks need", corrupt: true},
		{name: "terabytes-in-1MiB", mutate: func(b []byte) []byte {
			// 2040 GiB in 512-byte blocks: a BAT of 16 GiB in a 1 MiB file.
			copy(b[28:], "win ")
			be.PutUint64(b[48:], 2040<<30)
			refooter(b)
			be.PutUint32(b[sectorSize+28:], 0xff000000)
			be.PutUint32(b[sectorSize+32:], 512)
			reheader(b)
			return append(b, make([]byte, 1<<20)...)[:1<<20]
		}, want: "BAT of 4278190080 entries at 0x600 outside the file of 1048576 bytes", corrupt: true},
		{name: "table-beyond-vdisk", mutate: func(b []byte) []byte {
			// 5 GiB in 512-byte blocks: a BAT of 40 MiB, in a sparse file
			// of 48 MiB that holds it.
			copy(b[28:], "win ")
			be.PutUint64(b[48:], 5<<30)
			refooter(b)
			be.PutUint32(b[sectorSize+28:], 10<<20)
			be.PutUint32(b[sectorSize+32:], 512)
			reheader(b)
			return b
		}, size: 48 << 20, want: "BAT of 10485760 entries (max table entries) is larger than the 32 MiB vdisk reads"},
		{name: "bat-outside-file", mutate: func(b []byte) []byte { be.PutUint64(b[sectorSize+16:], 1<<50); reheader(b); return b }, want: "outside the file", corrupt: true},
		{name: "bat-past-eof", mutate: func(b []byte) []byte { be.PutUint32(b[bat:], 0x00fffff0); return b }, want: "past the end of the file", corrupt: true},
		{name: "bat-into-metadata", mutate: func(b []byte) []byte { be.PutUint32(b[bat:], 1); return b }, want: "overlaps the image metadata", corrupt: true},
		{name: "bat-shared-block", mutate: func(b []byte) []byte { copy(b[bat+4:bat+8], b[bat:bat+4]); return b }, want: "share the block", corrupt: true},
		{name: "truncated", mutate: func(b []byte) []byte { return b[:len(b)-40000] }, want: "truncated", corrupt: true},
		{name: "not-vhd", mutate: func(b []byte) []byte { return []byte(strings.Repeat("x", 4096)) }, want: "not a VHD", notVHD: true},
		{name: "empty", mutate: func(b []byte) []byte { return nil }, want: "too short", notVHD: true},
	}
	orig := smallImage(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := imagetest.Refused(t, Name, tc.mutate(append([]byte(nil), orig...)), tc.size)
			if tc.corrupt && !errors.Is(err, blockdev.ErrCorrupt) {
				t.Errorf("error does not wrap ErrCorrupt: %v", err)
			}
			if tc.notVHD && (!errors.Is(err, ErrNotVHD) || !errors.Is(err, image.ErrWrongFormat)) {
				t.Errorf("error does not wrap ErrNotVHD and image.ErrWrongFormat: %v", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}
