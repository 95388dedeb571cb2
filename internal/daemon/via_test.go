package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"vdisk/internal/api"
	"vdisk/internal/nbd/kernel"
	"vdisk/internal/ublk"
)

// Kernel paths as probeKernel reports them on kernels with and without the
// modules.
var (
	errNoUblk = fmt.Errorf("ublk: %w: /dev/ublk-control is missing (modprobe ublk_drv)", ublk.ErrUnavailable)
	errNoNBD  = fmt.Errorf("%w: no netlink family and no /dev/nbd0 (modprobe nbd)", kernel.ErrUnavailable)
	bothPath  = kernelPaths{netlink: true}
	nbdOnly   = kernelPaths{ublk: errNoUblk, netlink: true}
	nbdIoctl  = kernelPaths{ublk: errNoUblk}
	neither   = kernelPaths{ublk: errNoUblk, nbd: errNoNBD}
)

func TestChooseVia(t *testing.T) {
	tests := []struct {
		name       string
		format     string
		paths      kernelPaths
		via, why   string
		whyMissing string
	}{
		{name: "ublk first", format: "raw", paths: bothPath, via: api.ViaUblk, why: "ublk: /dev/ublk-control present"},
		{name: "ublk for qcow2 too", format: "qcow2", paths: kernelPaths{nbd: errNoNBD}, via: api.ViaUblk, why: "ublk: /dev/ublk-control present"},
		{name: "nbd without ublk", format: "raw", paths: nbdOnly, via: api.ViaNBD, why: "nbd: kernel nbd client present (netlink), no ublk module"},
		{name: "nbd over ioctl", format: "vhdx", paths: nbdIoctl, via: api.ViaNBD, why: "nbd: kernel nbd client present (ioctl), no ublk module"},
		{name: "loop for raw", format: "raw", paths: neither, via: api.ViaLoop, why: "loop: raw image, no ublk or nbd module on this kernel"},
		{name: "fuse for the rest", format: "qcow2", paths: neither, via: api.ViaFUSE, why: "fuse: qcow2 image, no ublk or nbd module on this kernel"},
		{name: "fuse for encrypted raw", format: "encrypted raw", paths: neither, via: api.ViaFUSE, why: "fuse: encrypted raw image, no ublk or nbd module on this kernel"},
		{name: "fuse for object store raw", format: "object store raw", paths: neither, via: api.ViaFUSE, why: "fuse: object store raw image, no ublk or nbd module on this kernel"},
		{name: "a probe that failed otherwise is quoted", format: "raw",
			paths: kernelPaths{ublk: errors.New("ublk: permission denied"), nbd: errNoNBD},
			via:   api.ViaLoop, why: "loop: raw image, ublk unusable (ublk: permission denied), no nbd module"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			via, why := chooseVia(tt.format, tt.format == "raw", tt.paths)
			if via != tt.via || why != tt.why {
				t.Fatalf("chooseVia(%s) = %q, %q; want %q, %q", tt.format, via, why, tt.via, tt.why)
			}
		})
	}
}

func TestCheckVia(t *testing.T) {
	tests := []struct {
		name  string
		via   string
		paths kernelPaths
		want  string // "" means no error
	}{
		{name: "ublk present", via: api.ViaUblk, paths: bothPath},
		{name: "nbd present", via: api.ViaNBD, paths: nbdOnly},
		{name: "loop needs no module", via: api.ViaLoop, paths: neither},
		{name: "default needs no module", via: "", paths: neither},
		{name: "no ublk", via: api.ViaUblk, paths: neither, want: "--via ublk: ublk is not available: /dev/ublk-control is missing (modprobe ublk_drv)"},
		{name: "no nbd", via: api.ViaNBD, paths: neither, want: "--via nbd: the kernel nbd client is not available: no netlink family and no /dev/nbd0 (modprobe nbd)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkVia(tt.via, tt.paths)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("checkVia(%q) = %v, want nil", tt.via, err)
				}
				return
			}
			e := wantCode(t, err, api.CodeViaUnavailable)
			if e.Message != tt.want {
				t.Fatalf("message %q, want %q", e.Message, tt.want)
			}
		})
	}
}

// TestOpenDefaultVia: with neither module (as on this host), a raw image
// goes to a loop device and says why; the reason survives a restart.
func TestOpenDefaultVia(t *testing.T) {
	needKernel(t)
	probe := func() kernelPaths { return neither }
	td := startDaemonProbe(t, "", probe)
	ctx := context.Background()
	file := filepath.Join(td.dir, "d.img")
	d, err := td.c.Open(ctx, api.OpenRequest{File: file, Create: true, Size: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	const why = "loop: raw image, no ublk or nbd module on this kernel"
	if d.Via != api.ViaLoop || d.ViaReason != why || !strings.HasPrefix(d.Device, "/dev/loop") {
		t.Fatalf("opened %s via %q (%q), want loop (%q)", d.Device, d.Via, d.ViaReason, why)
	}
	other := filepath.Join(td.dir, "e.img")
	e, err := td.c.Open(ctx, api.OpenRequest{File: other, Create: true, Size: 4 << 20, Via: api.ViaLoop})
	if err != nil {
		t.Fatal(err)
	}
	if e.ViaReason != "asked for (--via loop)" {
		t.Fatalf("reason of an asked-for path: %q", e.ViaReason)
	}
	// A second daemon on the same state, as after a crash of the first,
	// adopts the loop devices; the records keep their reasons.
	stateDir := td.stateDir
	td2 := startDaemonProbe(t, stateDir, probe)
	for _, f := range []struct{ file, why string }{{file, why}, {other, "asked for (--via loop)"}} {
		got, err := td2.c.Disk(ctx, api.DiskID(f.file))
		if err != nil {
			t.Fatal(err)
		}
		if got.State != api.StateOpen || got.Via != api.ViaLoop || got.ViaReason != f.why {
			t.Fatalf("after restart %s: state %s via %q (%q), want open loop (%q)", f.file, got.State, got.Via, got.ViaReason, f.why)
		}
		if _, err := td2.c.CloseDisk(ctx, got.ID, false); err != nil {
			t.Fatal(err)
		}
	}
	td.stop() // finds its loop devices already detached
}

// TestOpenViaMissingModule: on a kernel without nbd or ublk, asking for
// them fails with one line naming the module, and creates nothing.
func TestOpenViaMissingModule(t *testing.T) {
	needKernel(t)
	for _, tt := range []struct {
		via, module, dev string
	}{{api.ViaNBD, "modprobe nbd", "/dev/nbd0"}, {api.ViaUblk, "modprobe ublk_drv", "/dev/ublk-control"}} {
		t.Run(tt.via, func(t *testing.T) {
			if _, err := os.Stat(tt.dev); err == nil {
				t.Skipf("this kernel has %s: the VM tests (internal/e2e) cover --via %s", tt.dev, tt.via)
			}
			td := startDaemon(t, "")
			file := filepath.Join(td.dir, "m.img")
			_, err := td.c.Open(context.Background(), api.OpenRequest{File: file, Create: true, Via: tt.via})
			e := wantCode(t, err, api.CodeViaUnavailable)
			if !strings.HasPrefix(e.Message, "--via "+tt.via+": ") || !strings.Contains(e.Message, tt.module) || strings.Contains(e.Message, "\n") {
				t.Fatalf("message %q: want one line naming %q", e.Message, tt.module)
			}
			if _, err := os.Stat(file); !os.IsNotExist(err) {
				t.Fatalf("a refused open created %s: %v", file, err)
			}
		})
	}
}

// TestRestoreViaMissingModule: a state file naming an nbd disk, on a
// kernel that has no nbd (any more), leaves the disk failed with the reason
// and keeps its device index for a later restart.
func TestRestoreViaMissingModule(t *testing.T) {
	needKernel(t)
	stateDir := t.TempDir()
	img := filepath.Join(t.TempDir(), "n.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	idx := 3
	sd := stateDisk{ID: api.DiskID(img), File: img, Format: "raw", Via: api.ViaNBD, ViaReason: "nbd: kernel nbd client present (netlink), no ublk module", Device: "/dev/nbd3", Index: &idx}
	if err := saveState(stateDir, []stateDisk{sd}); err != nil {
		t.Fatal(err)
	}
	td := startDaemonProbe(t, stateDir, func() kernelPaths { return neither })
	got, err := td.c.Disk(context.Background(), sd.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != api.StateFailed || !strings.Contains(got.Error, "modprobe nbd") || got.Via != api.ViaNBD || got.ViaReason != sd.ViaReason {
		t.Fatalf("restored %+v: want failed, naming the module", got)
	}
	sds, err := loadState(stateDir)
	if err != nil || len(sds) != 1 || sds[0].Index == nil || *sds[0].Index != idx {
		t.Fatalf("state after restore: %+v, %v; want the index %d kept", sds, err, idx)
	}
}
