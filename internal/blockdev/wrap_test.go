package blockdev

import (
	"errors"
	"testing"
)

// plainDev is a Device with no optional capabilities.
type plainDev struct{ Device }

// caps reports which capabilities d exposes.
func caps(d Device) (t, z, e bool) {
	_, t = d.(Trimmer)
	_, z = d.(ZeroWriter)
	_, e = d.(Extenter)
	return
}

func TestDecoratorCapabilities(t *testing.T) {
	tests := []struct {
		name    string
		dev     func() Device
		t, z, e bool
	}{
		{"mem", func() Device { return NewMem(1 << 20) }, true, true, true},
		{"plain", func() Device { return plainDev{NewMem(1 << 20)} }, false, false, false},
		{"readonly mem", func() Device { return ReadOnly(NewMem(1 << 20)) }, false, false, true},
		{"readonly plain", func() Device { return ReadOnly(plainDev{NewMem(1 << 20)}) }, false, false, false},
		{"section mem", func() Device { return Section(NewMem(1<<20), 4096, 8192) }, true, true, true},
		{"section plain", func() Device { return Section(plainDev{NewMem(1 << 20)}, 0, 512) }, false, false, false},
		{"section readonly", func() Device { return Section(ReadOnly(NewMem(1<<20)), 512, 512) }, false, false, true},
		{"caps trim only", func() Device { m := NewMem(512); return WithCaps(m, Caps{Trimmer: m}) }, true, false, false},
		{"caps zero only", func() Device { m := NewMem(512); return WithCaps(m, Caps{ZeroWriter: m}) }, false, true, false},
		{"caps trim+extents", func() Device { m := NewMem(512); return WithCaps(m, Caps{Trimmer: m, Extenter: m}) }, true, false, true},
		{"caps zero+extents", func() Device { m := NewMem(512); return WithCaps(m, Caps{ZeroWriter: m, Extenter: m}) }, false, true, true},
		{"caps trim+zero", func() Device { m := NewMem(512); return WithCaps(m, Caps{Trimmer: m, ZeroWriter: m}) }, true, true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := tc.dev()
			gt, gz, ge := caps(d)
			if gt != tc.t || gz != tc.z || ge != tc.e {
				t.Errorf("Trimmer/ZeroWriter/Extenter = %v/%v/%v, want %v/%v/%v", gt, gz, ge, tc.t, tc.z, tc.e)
			}
			if _, ok := d.(Describer); !ok && tc.name != "mem" && tc.name != "plain" {
				t.Errorf("decorator is not a Describer")
			}
		})
	}
}

func TestReadOnlyInfoAndWrites(t *testing.T) {
	m := NewMem(4096)
	if _, err := m.WriteAt([]byte{9}, 100); err != nil {
		t.Fatal(err)
	}
	d := ReadOnly(m)
	if !InfoOf(d).ReadOnly {
		t.Error("Info().ReadOnly = false")
	}
	if n, err := d.WriteAt([]byte{1}, 100); n != 0 || !errors.Is(err, ErrReadOnly) {
		t.Errorf("WriteAt = %d, %v; want 0, ErrReadOnly", n, err)
	}
	if err := WriteZeroes(d, 0, 4096, false); !errors.Is(err, ErrReadOnly) {
		t.Errorf("WriteZeroes helper = %v, want ErrReadOnly", err)
	}
	if err := Trim(d, 0, 4096); !errors.Is(err, ErrNotSupported) {
		t.Errorf("Trim helper = %v, want ErrNotSupported", err)
	}
	b := make([]byte, 1)
	if _, err := d.ReadAt(b, 100); err != nil || b[0] != 9 {
		t.Errorf("ReadAt = %v, %v; want [9]", b, err)
	}
}

func TestSectionInfoAlignment(t *testing.T) {
	tests := []struct {
		name     string
		off      int64
		logical  uint32
		physical uint32
	}{
		{"aligned", 8192, 512, 4096},
		{"512 aligned", 512, 512, 512},
		{"unaligned", 100, 512, 512},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := InfoOf(Section(NewMem(1<<20), tc.off, 4096))
			if in.LogicalBlockSize != tc.logical || in.PhysicalBlockSize != tc.physical {
				t.Errorf("block sizes %d/%d, want %d/%d", in.LogicalBlockSize, in.PhysicalBlockSize, tc.logical, tc.physical)
			}
		})
	}
}

func TestSectionPanicsOnBadWindow(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("Section past the end did not panic")
		}
	}()
	Section(NewMem(4096), 4000, 200)
}

func TestSectionTranslates(t *testing.T) {
	m := NewMem(1 << 20)
	s := Section(m, 128<<10, 256<<10)
	if _, err := s.WriteAt([]byte{5}, 0); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := m.ReadAt(b, 128<<10); err != nil || b[0] != 5 {
		t.Fatalf("inner byte = %v, %v; want 5", b, err)
	}
	ext, err := Extents(s, 0, s.Size())
	if err != nil {
		t.Fatal(err)
	}
	want := []Extent{{Off: 0, Len: 64 << 10}, {Off: 64 << 10, Len: 192 << 10, Flags: ExtentHole | ExtentZero}}
	if len(ext) != len(want) || ext[0] != want[0] || ext[1] != want[1] {
		t.Errorf("extents %+v, want %+v", ext, want)
	}
	if _, err := s.WriteAt([]byte{1}, 256<<10); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("write past window = %v, want ErrOutOfRange", err)
	}
}
