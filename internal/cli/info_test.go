package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"vdisk/internal/api"
)

func TestInfoText(t *testing.T) {
	socket, dir := inProcessDaemon(t)
	file := filepath.Join(dir, "i.img")
	f := strings.Fields(mustRun(t, "open", "--socket", socket, file, "--size", "10G"))
	for _, arg := range []string{file, f[0], f[1]} {
		out := mustRun(t, "info", "--socket", socket, arg)
		for _, want := range []string{
			"id:            " + api.DiskID(file) + "\n",
			"device:        " + f[0] + "\n",
			"file:          " + file + "\n",
			"size:          10737418240 bytes (10G), 20971520 sectors\n",
			"block size:    512 logical, 4096 physical\n",
			"geometry:      1305 cylinders, 255 heads, 63 sectors/track, 512 bytes/sector\n",
			"writable:      yes\n",
			"removable:     no\n",
			"hotplug:       yes\n",
			"media type:    fixed\n",
			"unique id:     " + api.UniqueID(file) + "\n",
			"via:           loop\n",
			"via reason:    loop: raw image, no ublk or nbd module on this kernel\n",
			"state:         open\n",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("info %s lacks %q:\n%s", arg, want, out)
			}
		}
	}
	// A file that is not open: the image's facts.
	other := filepath.Join(dir, "other.img")
	if err := os.WriteFile(other, make([]byte, 3<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	out := mustRun(t, "info", "--socket", socket, other)
	for _, want := range []string{"device:     (not open)\n", "size:       3145728 bytes (3M), 6144 sectors\n", "format:     raw\n", "allocated:  3145728 bytes (3M)\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("info of a closed file lacks %q:\n%s", want, out)
		}
	}
	code, _, errs := run(t, "info", "--socket", socket, filepath.Join(dir, "none.img"))
	if code == 0 || !strings.Contains(errs, "does not exist") {
		t.Fatalf("info of a missing file: exit %d, stderr %q", code, errs)
	}
}

// TestInfoFormatDetails checks that info of a closed qcow2 shows what
// qemu-img info does: cluster size, compat, backing file, snapshots.
func TestInfoFormatDetails(t *testing.T) {
	needTools(t, "qemu-img")
	socket, dir := inProcessDaemon(t)
	base := filepath.Join(dir, "base.qcow2")
	top := filepath.Join(dir, "top.qcow2")
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=128k", base, "32M")
	runTool(t, "qemu-img", "snapshot", "-c", "before-upgrade", base)
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top)
	out := mustRun(t, "info", "--socket", socket, base)
	for _, want := range []string{"cluster size:  131072 bytes (128K)\n", "compat:        1.1\n", `"before-upgrade"`} {
		if !strings.Contains(out, want) {
			t.Errorf("info of base lacks %q:\n%s", want, out)
		}
	}
	if out := mustRun(t, "info", "--socket", socket, top); !strings.Contains(out, "backing file:  base.qcow2 (qcow2)\n") {
		t.Errorf("info of top lacks its backing file:\n%s", out)
	}
	var im api.Image
	if err := json.Unmarshal([]byte(mustRun(t, "info", "--json", "--socket", socket, base)), &im); err != nil {
		t.Fatal(err)
	}
	if im.Details == nil || im.Details.ClusterSize != 128<<10 || len(im.Details.Snapshots) != 1 || im.Details.Snapshots[0].Name != "before-upgrade" {
		t.Fatalf("info --json details: %+v", im.Details)
	}
}
