package cli

import (
	"path/filepath"
	"strings"
	"testing"

	"vdisk/internal/api"
)

func TestListTable(t *testing.T) {
	socket, dir := inProcessDaemon(t)
	a, b := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	devA := strings.Fields(mustRun(t, "open", "--socket", socket, a, "--size", "3M"))[0]
	devB := strings.Fields(mustRun(t, "open", "--socket", socket, b, "--size", "1G"))[0]
	out := mustRun(t, "list", "--socket", socket)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("list:\n%s", out)
	}
	if got := strings.Fields(lines[0]); strings.Join(got, " ") != "ID DEVICE FILE FORMAT SIZE RO VIA CACHE" {
		t.Fatalf("header %q", lines[0])
	}
	want := [][]string{
		{api.DiskID(a), devA, a, "raw", "3M", "0", "loop", "writeback"},
		{api.DiskID(b), devB, b, "raw", "1G", "0", "loop", "writeback"},
	}
	for i, w := range want {
		if got := strings.Fields(lines[i+1]); strings.Join(got, " ") != strings.Join(w, " ") {
			t.Errorf("row %d = %q, want %q", i, got, w)
		}
	}
	// Columns line up under the header.
	col := strings.Index(lines[0], "DEVICE")
	for _, l := range lines[1:] {
		if !strings.HasPrefix(l[col:], "/dev/loop") {
			t.Errorf("DEVICE column not aligned in %q", l)
		}
	}
}
