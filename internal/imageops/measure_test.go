package imageops

import (
	"testing"

	"vdisk/internal/blockdev"
)

// TestMeasureSizes: numbers qemu-img measure (7.2 and 10 alike) printed
// for empty disks, e.g. qemu-img measure -O qcow2 -o
// cluster_size=4k,refcount_bits=1 --size 3G.
func TestMeasureSizes(t *testing.T) {
	for _, c := range []struct {
		format         string
		opts           map[string]string
		size           int64
		required, full int64
	}{
		{"qcow2", nil, 1 << 30, 393216, 1074135040},
		{"qcow2", map[string]string{"extended_l2": "on"}, 1 << 30, 524288, 1074266112},
		{"qcow2", map[string]string{"cluster_size": "4k", "refcount_bits": "1"}, 3 << 30, 6414336, 3227639808},
		{"qcow2", map[string]string{"preallocation": "full"}, 100 << 20, 105185280, 105185280},
		{"raw", nil, 1000, 1024, 1024},
	} {
		m, err := Measure(nil, false, MeasureOptions{Format: c.format, Options: c.opts, Size: c.size})
		if err != nil {
			t.Fatal(err)
		}
		if m.Required != c.required || m.FullyAllocated != c.full || m.HasBitmaps {
			t.Errorf("%s %v %d: %+v, want required %d, fully allocated %d", c.format, c.opts, c.size, m, c.required, c.full)
		}
	}
}

// TestMeasureSource: required counts the clusters that hold data; a
// qcow2 source shows bitmaps (v3 targets only).
func TestMeasureSource(t *testing.T) {
	// qemu-img measure -O qcow2 of a 4 MiB image with 1 MiB of data at 0
	// and 64 KiB at 2 MiB: required 1441792, fully allocated 4521984.
	src := blockdev.NewMem(4 << 20)
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = 1
	}
	if _, err := src.WriteAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := src.WriteAt(buf[:64<<10], 2<<20); err != nil {
		t.Fatal(err)
	}
	m, err := Measure(src, true, MeasureOptions{Format: "qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	// A Mem's unwritten 64 KiB pages are holes: its status is qemu's.
	if m.Required != 1441792 || m.FullyAllocated != 4521984 || !m.HasBitmaps {
		t.Errorf("%+v", m)
	}
	m, err = Measure(src, true, MeasureOptions{Format: "qcow2", Options: map[string]string{"compat": "0.10"}})
	if err != nil || m.HasBitmaps {
		t.Errorf("compat=0.10: %+v %v", m, err)
	}
	m, err = Measure(src, false, MeasureOptions{Format: "raw"})
	if err != nil || m.Required != 4<<20 || m.FullyAllocated != 4<<20 {
		t.Errorf("raw: %+v %v", m, err)
	}
	if _, err := Measure(src, false, MeasureOptions{Format: "qcow2", Options: map[string]string{"nonsense": "1"}}); err == nil {
		t.Error("an unknown option was accepted")
	}
	if _, err := Measure(src, false, MeasureOptions{Format: "qcow2", Options: map[string]string{"cluster_size": "3000"}}); err == nil {
		t.Error("a cluster size that is no power of two was accepted")
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"1": 1, "1k": 1024, "1M": 1 << 20, "2G": 2 << 30, "1T": 1 << 40, "512b": 512, "3E": 3 << 60} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("%q: %d %v, want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "-1", "1Q", "8E", "99999999999999999999"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}
