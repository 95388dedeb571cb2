package cli

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// setRefcount16 overwrites the 16-bit refcount of cluster cl in the first
// refcount block of a default qemu-img qcow2 (64K clusters, block at 128K).
func setRefcount16(t *testing.T, path string, cl int, v uint16) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte{byte(v >> 8), byte(v)}, 128<<10+int64(cl)*2); err != nil {
		t.Fatal(err)
	}
}

// qemuCheckCode returns qemu-img check's exit status.
func qemuCheckCode(t *testing.T, path string) int {
	t.Helper()
	err := exec.Command("qemu-img", "check", path).Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0
}

func TestCheck(t *testing.T) {
	needTools(t, "qemu-img", "qemu-io")
	tests := []struct {
		name   string
		damage func(t *testing.T, p string)
		code   int
		want   string
	}{
		{"clean", func(*testing.T, string) {}, 0, "No errors were found"},
		{"leak", func(t *testing.T, p string) { setRefcount16(t, p, 3, 2) }, 3, "Leaked cluster 3 refcount=2 reference=1"},
		{"corrupt", func(t *testing.T, p string) { setRefcount16(t, p, 3, 0) }, 2, "ERROR cluster 3 refcount=0 reference=1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "img.qcow2")
			runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", p, "100M")
			runTool(t, "qemu-io", "-c", "write -P 0x42 1M 300k", p)
			tc.damage(t, p)
			code, out, _ := run(t, "check", p)
			if code != tc.code || !strings.Contains(out, tc.want) {
				t.Fatalf("code %d, out %q: want %d and %q", code, out, tc.code, tc.want)
			}
			if q := qemuCheckCode(t, p); q != code {
				t.Errorf("qemu-img check exits %d, vdisk check %d", q, code)
			}
			code, out, _ = run(t, "check", "--json", p)
			var res struct{ Corruptions, Leaks int }
			if err := json.Unmarshal([]byte(out), &res); err != nil || code != tc.code {
				t.Fatalf("--json: code %d, %q: %v", code, out, err)
			}
		})
	}
	t.Run("repair leaks", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "img.qcow2")
		runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", p, "100M")
		runTool(t, "qemu-io", "-c", "write -P 0x42 0 64k", p)
		setRefcount16(t, p, 3, 2)
		code, out, _ := run(t, "check", "--repair", "leaks", p)
		if code != 0 || !strings.Contains(out, "1 leaked clusters") {
			t.Fatalf("code %d, out %q", code, out)
		}
		runTool(t, "qemu-img", "check", p)
		runTool(t, "qemu-io", "-c", "read -P 0x42 0 64k", p)
	})
	t.Run("repair all", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "img.qcow2")
		runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", p, "100M")
		runTool(t, "qemu-io", "-c", "write -P 0x42 0 64k", p)
		setRefcount16(t, p, 3, 0) // a corruption: the data cluster counted 0
		if code, _, _ := run(t, "check", "--repair", "leaks", p); code != 2 {
			t.Fatalf("--repair leaks of a corruption: code %d, want 2 (not repairable that way)", code)
		}
		code, out, _ := run(t, "check", "--repair", "all", p)
		if code != 0 || !strings.Contains(out, "1 corruptions") || !strings.Contains(out, "No errors were found") {
			t.Fatalf("--repair all: code %d, out %q", code, out)
		}
		runTool(t, "qemu-img", "check", p)
		runTool(t, "qemu-io", "-c", "read -P 0x42 0 64k", p)
	})
	t.Run("raw", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "img.raw")
		if err := os.WriteFile(p, make([]byte, 4096), 0o644); err != nil {
			t.Fatal(err)
		}
		if code, _, errs := run(t, "check", p); code != 63 || !strings.Contains(errs, "does not support checks") {
			t.Fatalf("code %d, stderr %q", code, errs)
		}
	})
}
