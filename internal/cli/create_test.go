package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// qemuInfo returns qemu-img info --output json for path.
func qemuInfo(t *testing.T, path string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(runTool(t, "qemu-img", "info", "--output", "json", path)), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestCreate(t *testing.T) {
	needTools(t, "qemu-img")
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	tests := []struct {
		name  string
		args  []string
		check func(t *testing.T, info map[string]any)
	}{
		{"raw", []string{"create", filepath.Join(dir, "a.img"), "--size", "10M"}, func(t *testing.T, m map[string]any) {
			if m["format"] != "raw" || m["virtual-size"] != float64(10<<20) {
				t.Errorf("info %v", m)
			}
		}},
		{"qcow2", []string{"create", "-f", "qcow2", base, "--size", "1G", "--cluster-size", "128K", "-o", "refcount_bits=8,lazy_refcounts=on"}, func(t *testing.T, m map[string]any) {
			spec := m["format-specific"].(map[string]any)["data"].(map[string]any)
			if m["format"] != "qcow2" || m["virtual-size"] != float64(1<<30) || m["cluster-size"] != float64(128<<10) ||
				spec["compat"] != "1.1" || spec["refcount-bits"] != float64(8) || spec["lazy-refcounts"] != true {
				t.Errorf("info %v", m)
			}
		}},
		{"v2", []string{"create", "-f", "qcow2", filepath.Join(dir, "v2.qcow2"), "--size", "5G", "-o", "compat=0.10"}, func(t *testing.T, m map[string]any) {
			spec := m["format-specific"].(map[string]any)["data"].(map[string]any)
			if spec["compat"] != "0.10" {
				t.Errorf("info %v", m)
			}
		}},
		{"backing", []string{"create", "-f", "qcow2", filepath.Join(dir, "top.qcow2"), "--backing", "base.qcow2", "--backing-format", "qcow2"}, func(t *testing.T, m map[string]any) {
			if m["backing-filename"] != "base.qcow2" || m["backing-filename-format"] != "qcow2" || m["virtual-size"] != float64(1<<30) {
				t.Errorf("info %v", m)
			}
		}},
		{"backing probed", []string{"create", "-f", "qcow2", filepath.Join(dir, "top2.qcow2"), "-b", base, "--size", "2G"}, func(t *testing.T, m map[string]any) {
			if m["backing-filename-format"] != "qcow2" || m["virtual-size"] != float64(2<<30) {
				t.Errorf("info %v", m)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := run(t, tc.args...)
			if code != 0 || !strings.Contains(out, "created") {
				t.Fatalf("code %d, out %q, err %q", code, out, errs)
			}
			path := tc.args[len(tc.args)-1]
			for i, a := range tc.args {
				if strings.HasSuffix(a, ".img") || strings.HasSuffix(a, ".qcow2") {
					if i > 0 && tc.args[i-1] != "--backing" && tc.args[i-1] != "-b" {
						path = a
						break
					}
				}
			}
			if strings.HasSuffix(path, ".qcow2") {
				runTool(t, "qemu-img", "check", path)
			}
			tc.check(t, qemuInfo(t, path))
		})
	}
	for _, bad := range [][]string{
		{"create", base, "--size", "1M"},                                  // exists
		{"create", "-f", "qcow2", filepath.Join(dir, "x.qcow2")},          // no size
		{"create", "-f", "vhd9", filepath.Join(dir, "y"), "--size", "1M"}, // unknown format
		{"create", "-f", "qcow2", filepath.Join(dir, "z"), "--size", "1M", "--cluster-size", "3000"},
		{"create", "-f", "qcow2", filepath.Join(dir, "w"), "--size", "1M", "-o", "compat=2"},
	} {
		if code, _, errs := run(t, bad...); code == 0 || errs == "" {
			t.Errorf("%q: code %d, stderr %q: want a failure with a message", bad, code, errs)
		}
	}
}

// TestResize: vdisk resize grows and (with --shrink) shrinks a raw file,
// grows a qcow2 image that qemu-img then checks, takes +SIZE and -SIZE,
// and refuses what it cannot do by name.
func TestResize(t *testing.T) {
	needTools(t, "qemu-img")
	dir := t.TempDir()
	raw, q := filepath.Join(dir, "r.img"), filepath.Join(dir, "q.qcow2")
	for _, args := range [][]string{{"create", raw, "--size", "10M"}, {"create", "-f", "qcow2", q, "--size", "10M"}} {
		if code, _, errs := run(t, args...); code != 0 {
			t.Fatalf("%v: %s", args, errs)
		}
	}
	size := func(p string) int64 {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	for _, tc := range []struct {
		args []string
		raw  int64
	}{
		{[]string{"resize", raw, "+6M"}, 16 << 20},
		{[]string{"resize", raw, "1G"}, 1 << 30},
		{[]string{"resize", "--shrink", raw, "-1000M"}, 24 << 20},
	} {
		if code, out, errs := run(t, tc.args...); code != 0 || !strings.Contains(out, "resized") || size(raw) != tc.raw {
			t.Fatalf("%v: code %d, %q %q, size %d; want %d", tc.args, code, out, errs, size(raw), tc.raw)
		}
	}
	if code, _, errs := run(t, "resize", raw, "1M"); code == 0 || !strings.Contains(errs, "--shrink") {
		t.Fatalf("shrink without --shrink: code %d, %q", code, errs)
	}
	if code, _, errs := run(t, "resize", q, "+2G"); code != 0 {
		t.Fatalf("resize qcow2: %s", errs)
	}
	runTool(t, "qemu-img", "check", q)
	if info := runTool(t, "qemu-img", "info", q); !strings.Contains(info, "(2157969408 bytes)") {
		t.Fatalf("qemu-img info after +2G:\n%s", info)
	}
	if code, _, errs := run(t, "resize", "--shrink", q, "1M"); code == 0 || !strings.Contains(errs, "not supported") {
		t.Fatalf("shrink qcow2: code %d, %q", code, errs)
	}
	vdi := filepath.Join(dir, "v.vdi")
	run(t, "create", "-f", "vdi", vdi, "--size", "10M")
	if code, _, errs := run(t, "resize", vdi, "20M"); code == 0 || !strings.Contains(errs, "vdi images cannot be resized") {
		t.Fatalf("resize vdi: code %d, %q", code, errs)
	}
}

// TestSnapshotCommand: vdisk snapshot create/list/apply/delete on a qcow2
// image, checked by qemu-img; a raw image is refused by name.
func TestSnapshotCommand(t *testing.T) {
	needTools(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	q := filepath.Join(dir, "s.qcow2")
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", q, "16M")
	runTool(t, "qemu-io", "-c", "write -P 0x11 0 1M", q)
	if code, out, errs := run(t, "snapshot", "create", q, "clean"); code != 0 || !strings.Contains(out, "created snapshot clean (id 1)") {
		t.Fatalf("snapshot create: %d %q %q", code, out, errs)
	}
	runTool(t, "qemu-io", "-c", "write -P 0x22 0 1M", q)
	if code, out, _ := run(t, "snapshot", "list", q); code != 0 || !strings.Contains(out, "clean") {
		t.Fatalf("snapshot list: %d %q", code, out)
	}
	var snaps []map[string]any
	code, out, _ := run(t, "snapshot", "list", "--json", q)
	if err := json.Unmarshal([]byte(out), &snaps); code != 0 || err != nil || len(snaps) != 1 || snaps[0]["name"] != "clean" {
		t.Fatalf("snapshot list --json: %d %q %v", code, out, err)
	}
	if code, _, errs := run(t, "snapshot", "apply", q, "clean"); code != 0 {
		t.Fatalf("snapshot apply: %s", errs)
	}
	if out := runTool(t, "qemu-io", "-c", "read -P 0x11 0 1M", q); strings.Contains(out, "fail") {
		t.Fatalf("after apply, qemu-io reads:\n%s", out)
	}
	if code, _, errs := run(t, "snapshot", "delete", q, "1"); code != 0 {
		t.Fatalf("snapshot delete: %s", errs)
	}
	runTool(t, "qemu-img", "check", q)
	if out := runTool(t, "qemu-img", "snapshot", "-l", q); strings.Contains(out, "clean") {
		t.Fatalf("deleted snapshot still listed:\n%s", out)
	}
	if code, _, errs := run(t, "snapshot", "apply", q, "nope"); code == 0 || !strings.Contains(errs, "no such snapshot") {
		t.Fatalf("apply of a missing snapshot: %d %q", code, errs)
	}
	raw := filepath.Join(dir, "r.img")
	run(t, "create", raw, "--size", "1M")
	if code, _, errs := run(t, "snapshot", "create", raw, "x"); code == 0 || !strings.Contains(errs, "no internal snapshots") {
		t.Fatalf("snapshot of a raw image: %d %q", code, errs)
	}
}
