package blockmap_test

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"vdisk/internal/image"
	_ "vdisk/internal/image/all"
	"vdisk/internal/image/imagetest"
	"vdisk/internal/nbd/nbdtest"
)

// qemuEntry is one entry of qemu-img map --output=json. Compressed is
// printed by qemu 8.2 and later only; Offset only where there is one.
type qemuEntry struct {
	Start      int64  `json:"start"`
	Length     int64  `json:"length"`
	Depth      int    `json:"depth"`
	Present    bool   `json:"present"`
	Zero       bool   `json:"zero"`
	Data       bool   `json:"data"`
	Compressed *bool  `json:"compressed"`
	Offset     *int64 `json:"offset"`
}

// qemuMap runs qemuImg map --output=json on path.
func qemuMap(t *testing.T, qemuImg, format, path string) []qemuEntry {
	t.Helper()
	out, err := exec.Command(qemuImg, "map", "--output=json", "-f", format, path).Output()
	if err != nil {
		t.Fatalf("%s map %s: %v", qemuImg, path, err)
	}
	var es []qemuEntry
	if err := json.Unmarshal(out, &es); err != nil {
		t.Fatalf("%s map %s: %v\n%s", qemuImg, path, err, out)
	}
	return es
}

// qemuFiles runs qemuImg map --output=human on path: the file of each
// data run with an offset, by its start.
func qemuFiles(t *testing.T, qemuImg, format, path string) map[int64]string {
	t.Helper()
	out, err := exec.Command(qemuImg, "map", "--output=human", "-f", format, path).Output()
	if err != nil {
		t.Fatalf("%s map %s: %v", qemuImg, path, err)
	}
	files := map[int64]string{}
	for _, line := range strings.Split(string(out), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		start, err := strconv.ParseInt(f[0], 0, 64)
		if err != nil {
			t.Fatalf("map line %q: %v", line, err)
		}
		files[start] = strings.Join(f[3:], " ")
	}
	return files
}

// checkFiles checks that every run of got that qemu's human map lists
// (data, not zero, with an offset) names the file qemu names. qemu's
// human map refuses images with data at no offset (compressed, vhdx).
func checkFiles(t *testing.T, got []image.MapEntry, path, format string) {
	t.Helper()
	for _, e := range got {
		if e.Data && !e.HasOffset {
			return
		}
	}
	files := qemuFiles(t, "qemu-img", format, path)
	listed := 0
	for _, e := range got {
		if !e.Data || e.Zero {
			continue
		}
		listed++
		if want, ok := files[e.Start]; !ok || want != e.File {
			t.Errorf("run at %d is in %q, qemu says %q", e.Start, e.File, want)
		}
	}
	if listed != len(files) {
		t.Errorf("%d data runs, qemu's human map lists %d", listed, len(files))
	}
}

// ourMap opens path read-only and returns image.Map of the whole disk.
func ourMap(t *testing.T, path string, opt image.OpenOptions) []image.MapEntry {
	t.Helper()
	opt.ReadOnly = true
	d, err := image.Open(path, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, ok := d.(image.Layer); !ok {
		t.Fatalf("%s: %T is no image.Layer", path, d)
	}
	var es []image.MapEntry
	if err := image.Map(d, 0, d.Size(), func(e image.MapEntry) error {
		es = append(es, e)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return es
}

func fmtOurs(es []image.MapEntry) string {
	var b strings.Builder
	for _, e := range es {
		fmt.Fprintf(&b, "  %+v\n", e)
	}
	return b.String()
}

func fmtQemu(es []qemuEntry) string {
	var b strings.Builder
	for _, e := range es {
		off := "-"
		if e.Offset != nil {
			off = strconv.FormatInt(*e.Offset, 10)
		}
		c := "-"
		if e.Compressed != nil {
			c = strconv.FormatBool(*e.Compressed)
		}
		fmt.Fprintf(&b, "  {Start:%d Length:%d Depth:%d Present:%v Zero:%v Data:%v Compressed:%s Offset:%s}\n",
			e.Start, e.Length, e.Depth, e.Present, e.Zero, e.Data, c, off)
	}
	return b.String()
}

// sameMap compares our entries with qemu's field by field.
func sameMap(t *testing.T, what string, got []image.MapEntry, want []qemuEntry) {
	t.Helper()
	bad := len(got) != len(want)
	for i := 0; !bad && i < len(got); i++ {
		g, w := got[i], want[i]
		bad = g.Start != w.Start || g.Length != w.Length || g.Depth != w.Depth || g.Present != w.Present ||
			g.Zero != w.Zero || g.Data != w.Data || g.HasOffset != (w.Offset != nil) ||
			w.Offset != nil && g.Offset != *w.Offset || w.Compressed != nil && g.Compressed != *w.Compressed
	}
	if bad {
		t.Errorf("%s: image.Map differs from qemu-img map\nours:\n%sqemu:\n%s", what, fmtOurs(got), fmtQemu(want))
	}
}

type mapCase struct {
	name   string
	format string // qemu's name of the format
	file   string
	size   string
	opts   string   // qemu-img create -o
	io     []string // qemu-io commands on the image
	// raw, when set, makes the image by qemu-img convert from a raw
	// image written with io (streamOptimized, which qemu-io cannot
	// write).
	raw bool
	// base, when set, makes a backing image (same format) first, with
	// baseIO, and the image over it with -b.
	base   string
	baseIO []string
}

// scattered writes data, zeroes and discards across blocks of every
// size the cases use, unaligned too.
var scattered = []string{
	"write -P 0x11 1M 1M",
	"write -z 8M 4M",
	"write -P 0x22 20M 64k",
	"write -P 0x33 33M 4k",
	"write -P 0x44 40M 6M",
	"discard 42M 2M",
	"write -z 44M 64k",
	"write -P 0x55 63M 1M",
}

var mapCases = []mapCase{
	{name: "vhd-dynamic", format: "vpc", file: "x.vhd", size: "64M", opts: "subformat=dynamic", io: scattered},
	{name: "vhd-dynamic-empty", format: "vpc", file: "x.vhd", size: "64M", opts: "subformat=dynamic"},
	{name: "vhd-fixed", format: "vpc", file: "x.vhd", size: "64M", opts: "subformat=fixed", io: scattered},
	{name: "vhd-fixed-empty", format: "vpc", file: "x.vhd", size: "64M", opts: "subformat=fixed"},
	{name: "vhdx-dynamic", format: "vhdx", file: "x.vhdx", size: "64M", io: scattered},
	{name: "vhdx-fixed", format: "vhdx", file: "x.vhdx", size: "64M", opts: "subformat=fixed", io: scattered},
	{name: "vhdx-block-1M", format: "vhdx", file: "x.vhdx", size: "64M", opts: "block_size=1M", io: scattered},
	{name: "vhdx-block-8M", format: "vhdx", file: "x.vhdx", size: "64M", opts: "block_size=8M", io: scattered},
	{name: "vdi-dynamic", format: "vdi", file: "x.vdi", size: "64M", io: scattered},
	{name: "vdi-dynamic-empty", format: "vdi", file: "x.vdi", size: "64M"},
	{name: "vdi-static", format: "vdi", file: "x.vdi", size: "64M", opts: "static=on", io: scattered},
	{name: "vmdk-monolithicSparse", format: "vmdk", file: "x.vmdk", size: "64M", io: scattered},
	{name: "vmdk-monolithicSparse-empty", format: "vmdk", file: "x.vmdk", size: "64M"},
	{name: "vmdk-zeroed-grain", format: "vmdk", file: "x.vmdk", size: "64M", opts: "zeroed_grain=on", io: scattered},
	{name: "vmdk-monolithicFlat", format: "vmdk", file: "x.vmdk", size: "64M", opts: "subformat=monolithicFlat", io: scattered},
	{name: "vmdk-twoGbMaxExtentSparse", format: "vmdk", file: "x.vmdk", size: "5G", opts: "subformat=twoGbMaxExtentSparse",
		io: append([]string{"write -P 0x66 2047M 2M", "write -P 0x67 4095M 1M", "write -z 4200M 1M"}, scattered...)},
	{name: "vmdk-twoGbMaxExtentFlat", format: "vmdk", file: "x.vmdk", size: "5G", opts: "subformat=twoGbMaxExtentFlat",
		io: append([]string{"write -P 0x66 2047M 2M", "write -P 0x67 4095M 1M", "write -z 4200M 1M"}, scattered...)},
	{name: "vmdk-streamOptimized", format: "vmdk", file: "x.vmdk", size: "64M", opts: "subformat=streamOptimized", io: scattered, raw: true},
	{name: "vmdk-delta", format: "vmdk", file: "top.vmdk", size: "64M", base: "base.vmdk", baseIO: scattered,
		io: []string{"write -P 0x77 1536k 1M", "write -z 9M 64k", "write -P 0x78 30M 128k", "write -P 0x79 63M 32k"}},
	{name: "vmdk-delta-empty", format: "vmdk", file: "top.vmdk", size: "64M", base: "base.vmdk", baseIO: scattered},
}

// make builds the case's image in dir with the system's qemu-img and
// qemu-io and returns its path.
func (c mapCase) make(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, c.file)
	qio := func(format, path string, cmds []string) {
		for _, cmd := range cmds {
			imagetest.Run(t, "qemu-io", "-f", format, "-c", cmd, path)
		}
	}
	create := []string{"create", "-q", "-f", c.format}
	if c.opts != "" {
		create = append(create, "-o", c.opts)
	}
	switch {
	case c.raw:
		src := filepath.Join(dir, "src.raw")
		imagetest.Run(t, "qemu-img", "create", "-q", "-f", "raw", src, c.size)
		qio("raw", src, c.io)
		imagetest.Run(t, "qemu-img", "convert", "-f", "raw", "-O", c.format, "-o", c.opts, src, path)
	case c.base != "":
		base := filepath.Join(dir, c.base)
		imagetest.Run(t, "qemu-img", append(create, base, c.size)...)
		qio(c.format, base, c.baseIO)
		imagetest.Run(t, "qemu-img", append(create, "-b", c.base, "-F", c.format, path)...)
		qio(c.format, path, c.io)
	default:
		imagetest.Run(t, "qemu-img", append(create, path, c.size)...)
		qio(c.format, path, c.io)
	}
	return path
}

// TestMapMatchesQemu makes images of every block-mapped format with
// qemu-img and qemu-io (fixed and dynamic, block sizes, flat and sparse
// extents, compressed grains, deltas) and checks that image.Map over the
// whole disk equals qemu-img map --output=json of qemu 7.2 and 10, field
// by field, and that every data run with an offset names the file qemu's
// human map names.
func TestMapMatchesQemu(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	imagetest.NeedTool(t, "qemu-io")
	q10 := filepath.Join(nbdtest.Qemu10(t), "qemu-img")
	for _, c := range mapCases {
		t.Run(c.name, func(t *testing.T) {
			path := c.make(t, t.TempDir())
			got := ourMap(t, path, image.OpenOptions{})
			sameMap(t, "qemu 7.2", got, qemuMap(t, "qemu-img", c.format, path))
			sameMap(t, "qemu 10", got, qemuMap(t, q10, c.format, path))
			checkFiles(t, got, path, c.format)
		})
	}
}
