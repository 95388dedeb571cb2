package nbd

import (
	"errors"
	"testing"
	"unsafe"

	"vdisk/internal/blockdev"
	"vdisk/internal/nbd/wire"
)

// TestExportMinBlockSize: an export's MinBlockSize is advertised as the
// minimum (and the preferred size is at least it); a bad one is refused.
func TestExportMinBlockSize(t *testing.T) {
	s := &Server{Exports: []Export{{Name: "d", Device: blockdev.NewMem(1 << 20), MinBlockSize: 4096}}}
	if err := s.init(); err != nil {
		t.Fatal(err)
	}
	if bs := s.blockSize(s.exports[0]); bs != (wire.BlockSize{Min: 4096, Preferred: 4096, Max: DefaultMaxPayload}) {
		t.Fatalf("block size %+v", bs)
	}
	for _, m := range []uint32{3000, 128 << 10} {
		s := &Server{Exports: []Export{{Name: "d", Device: blockdev.NewMem(1 << 20), MinBlockSize: m}}}
		if err := s.init(); !errors.Is(err, ErrBadExport) {
			t.Errorf("MinBlockSize %d: %v, want ErrBadExport", m, err)
		}
	}
}

// TestBufAligned: pooled buffers are page-aligned, as direct I/O wants.
func TestBufAligned(t *testing.T) {
	for _, n := range []int{1, 4096, 5000, 65536, 1 << 20} {
		b := getBuf(n)
		if len(*b) != n || !blockdevAligned(*b) {
			t.Errorf("getBuf(%d): len %d, aligned %v", n, len(*b), blockdevAligned(*b))
		}
		putBuf(b)
	}
}

func blockdevAligned(b []byte) bool { return uintptr(unsafe.Pointer(&b[0]))%4096 == 0 }
