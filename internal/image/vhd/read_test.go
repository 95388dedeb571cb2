package vhd

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"vdisk/internal/image/imagetest"

	"vdisk/internal/image"
)

// scattered are qemu-io writes at scattered offsets, some unaligned, some
// across block boundaries.
var scattered = []string{
	"write -P 0x11 0 4k",
	"write -P 0x22 1000 3000",
	"write -P 0x33 2047k 2k",
	"write -P 0x44 5M 300k",
	"write -P 0x55 7340031 1",
	"write -z 5200k 8k",
}

// TestReadQemuImages reads VHDs qemu-img made (fixed, dynamic, force_size,
// sizes that are and are not whole geometries) with data written by
// qemu-io, and compares them byte for byte with qemu-img convert -O raw.
func TestReadQemuImages(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	imagetest.NeedTool(t, "qemu-io")
	tests := []struct {
		name string
		opts string
		size string
	}{
		{"dynamic", "subformat=dynamic", "8M"},
		{"dynamic-odd", "subformat=dynamic", "7777k"},
		{"dynamic-force-size", "subformat=dynamic,force_size=on", "7777k"},
		{"fixed", "subformat=fixed", "8M"},
		{"fixed-force-size", "subformat=fixed,force_size=on", "7777k"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "img.vhd")
			imagetest.Run(t, "qemu-img", "create", "-q", "-f", "vpc", "-o", tc.opts, p, tc.size)
			for _, c := range scattered {
				imagetest.Run(t, "qemu-io", "-f", "vpc", "-c", c, p)
			}
			want := imagetest.QemuRaw(t, p, "vpc")
			d, err := image.Open(p, image.OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			imagetest.MustEqual(t, "read", imagetest.ReadAll(t, d), want)
			fa, err := image.Info(p, Name)
			if err != nil {
				t.Fatal(err)
			}
			if fa.VirtualSize != int64(len(want)) {
				t.Errorf("Info virtual size %d, qemu %d", fa.VirtualSize, len(want))
			}
		})
	}
}

// TestProbe checks that dynamic disks probe as vhd by their header copy and
// fixed ones by their footer (qemu probes those as raw), and that a footer
// that does not describe the file exactly leaves it raw.
func TestProbe(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	dir := t.TempDir()
	for _, tc := range []struct{ sub, want string }{{"dynamic", Name}, {"fixed", Name}} {
		p := filepath.Join(dir, tc.sub+".vhd")
		imagetest.Run(t, "qemu-img", "create", "-q", "-f", "vpc", "-o", "subformat="+tc.sub, p, "1M")
		got, err := image.Probe(p)
		if err != nil {
			t.Fatal(err)
		}
		if got != tc.want {
			t.Errorf("%s: probed %q, want %q", tc.sub, got, tc.want)
		}
	}
	// The fixed image's footer, pasted at the end of a larger raw file, and
	// the same file with its checksum broken: both stay raw.
	fixed, err := os.ReadFile(filepath.Join(dir, "fixed.vhd"))
	if err != nil {
		t.Fatal(err)
	}
	foot := fixed[len(fixed)-footerSize:]
	for name, b := range map[string][]byte{
		"footer of another size": append(make([]byte, 2<<20), foot...),
		"bad checksum":           append(append([]byte{}, fixed[:len(fixed)-1]...), fixed[len(fixed)-1]^0xff),
	} {
		p := filepath.Join(dir, "raw.img")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if got, err := image.Probe(p); err != nil || got != image.Raw {
			t.Errorf("%s: probed %q (%v), want raw", name, got, err)
		}
	}
}

// TestGeometry checks the CHS geometry against values qemu-img computes.
func TestGeometry(t *testing.T) {
	tests := []struct {
		sectors int64
		c       uint16
		h, s    uint8
	}{
		{20480, 301, 4, 17},
		{2097152, 2080, 16, 63},
		{65535 * 16 * 255, 65535, 16, 255},
		{1 << 40, 65535, 16, 255},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint(tc.sectors), func(t *testing.T) {
			c, h, s := geometry(tc.sectors)
			if c != tc.c || h != tc.h || s != tc.s {
				t.Errorf("geometry(%d) = %d/%d/%d, want %d/%d/%d", tc.sectors, c, h, s, tc.c, tc.h, tc.s)
			}
		})
	}
}

// TestVirtualSize checks which size each creator's footer gives, as qemu
// decides: the CHS geometry for Virtual PC and qemu without force_size,
// the footer's current size for Hyper-V, disk2vhd, XenServer, XenConverter
// and qemu's force_size, and for any image with the maximum geometry.
func TestVirtualSize(t *testing.T) {
	const current = 10 << 20
	tests := []struct {
		creator string
		c       uint16
		h, s    uint8
		want    int64
	}{
		{"vpc ", 302, 4, 17, 302 * 4 * 17 * 512},
		{"qemu", 302, 4, 17, 302 * 4 * 17 * 512},
		{"vdsk", 302, 4, 17, 302 * 4 * 17 * 512},
		{"win ", 302, 4, 17, current},
		{"qem2", 302, 4, 17, current},
		{"d2v ", 302, 4, 17, current},
		{"CTXS", 302, 4, 17, current},
		{"tap\x00", 302, 4, 17, current},
		{"vpc ", 65535, 16, 255, current},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%q", tc.creator), func(t *testing.T) {
			ft := &footer{creatorApp: tc.creator, cyls: tc.c, heads: tc.h, spt: tc.s, currentSize: current}
			got, err := ft.virtualSize()
			if err != nil || got != tc.want {
				t.Fatalf("virtual size %d, %v; want %d", got, err, tc.want)
			}
		})
	}
}
