package cli

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// qemuName is each writable format's name in qemu-img.
var qemuName = map[string]string{"raw": "raw", "qcow2": "qcow2", "vhd": "vpc", "vhdx": "vhdx", "vmdk": "vmdk", "vdi": "vdi"}

// TestConvertEveryPair converts a raw image with data and holes into every
// writable format, then every format into every other, and has qemu-img
// compare each result with the source.
func TestConvertEveryPair(t *testing.T) {
	needTools(t, "qemu-img")
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	data := make([]byte, 8<<20)
	for _, off := range []int{0, 3<<20 + 512, 8<<20 - 64<<10} {
		rand.Read(data[off : off+64<<10])
	}
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	formats := []string{"raw", "qcow2", "vhd", "vhdx", "vmdk", "vdi"}
	first := map[string]string{}
	for _, f := range formats {
		out := filepath.Join(dir, "first."+f)
		if code, _, errs := run(t, "convert", "-O", f, src, out); code != 0 {
			t.Fatalf("convert raw → %s: %s", f, errs)
		}
		runTool(t, "qemu-img", "compare", "-q", "-f", "raw", "-F", qemuName[f], src, out)
		first[f] = out
	}
	for _, from := range formats {
		for _, to := range formats {
			t.Run(from+"-to-"+to, func(t *testing.T) {
				out := filepath.Join(dir, from+"-to."+to)
				if code, _, errs := run(t, "convert", "-f", from, "-O", to, first[from], out); code != 0 {
					t.Fatalf("convert: %s", errs)
				}
				runTool(t, "qemu-img", "compare", "-q", "-f", "raw", "-F", qemuName[to], src, out)
				if to != "raw" && to != "vhd" { // qemu-img checks neither
					runTool(t, "qemu-img", "check", "-q", "-f", qemuName[to], out)
				}
			})
		}
	}
}

// TestConvertFormatOptions passes -o to the destination format: a
// streamOptimized VMDK (written in one pass) and a compat=0.10 qcow2, both
// checked by qemu-img; an unknown option is refused and leaves nothing.
func TestConvertFormatOptions(t *testing.T) {
	needTools(t, "qemu-img")
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	data := make([]byte, 4<<20)
	rand.Read(data[1<<20 : 1<<20+300<<10])
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		format, option, info string
	}{
		{"vmdk", "subformat=streamOptimized", "create type: streamOptimized"},
		{"qcow2", "compat=0.10", "compat: 0.10"},
	} {
		out := filepath.Join(dir, "out."+tc.format)
		if code, _, errs := run(t, "convert", "-O", tc.format, "-o", tc.option, src, out); code != 0 {
			t.Fatalf("convert -O %s -o %s: %s", tc.format, tc.option, errs)
		}
		if info := runTool(t, "qemu-img", "info", "-f", tc.format, out); !strings.Contains(info, tc.info) {
			t.Errorf("-o %s: qemu-img info lacks %q:\n%s", tc.option, tc.info, info)
		}
		runTool(t, "qemu-img", "check", "-q", "-f", tc.format, out)
		runTool(t, "qemu-img", "compare", "-q", "-f", "raw", "-F", tc.format, src, out)
	}
	bad := filepath.Join(dir, "bad.vmdk")
	if code, _, errs := run(t, "convert", "-O", "vmdk", "-o", "subformat=streamOptimized,colour=blue", src, bad); code == 0 || !strings.Contains(errs, "colour") {
		t.Fatalf("unknown option: code %d, %q", code, errs)
	}
	if _, err := os.Stat(bad); err == nil {
		t.Fatal("a refused convert left its destination behind")
	}
}
