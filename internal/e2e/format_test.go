package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"vdisk/internal/api"
)

// TestQcow2 opens a qcow2 image made by qemu-img: it goes through FUSE by
// default, carries a file system across close and reopen, and qemu-img
// finds it consistent afterwards.
func TestQcow2(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img is not installed")
	}
	e := newEnv(t)
	img := filepath.Join(e.dir, "disk.qcow2")
	sh(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "64M")
	var d api.Disk
	if err := json.Unmarshal([]byte(e.must("open", img, "--json")), &d); err != nil {
		t.Fatal(err)
	}
	if d.Format != "qcow2" || d.Via != "fuse" || d.Size != 64<<20 {
		t.Fatalf("record %+v, want a 64 MiB qcow2 disk via fuse", d)
	}
	mnt := filepath.Join(e.dir, "mnt")
	sh(t, "mkfs.ext4", "-q", "-F", d.Device)
	mount(t, d.Device, mnt)
	sums := writeFiles(t, mnt, 5<<20, 1000)
	sh(t, "umount", mnt)
	e.must("close", img)
	sh(t, "qemu-img", "check", "-q", img)
	e.wantFail(nil, "is a qcow2 image: it can only be attached --via fuse", "open", img, "--via", "loop")

	dev, _ := e.open(img)
	mount(t, dev, mnt)
	checkFiles(t, mnt, sums)
	sh(t, "umount", mnt)
	sh(t, "e2fsck", "-fn", dev)
	e.must("close", dev)

	// A new image in a named format is created by vdisk itself.
	fresh := filepath.Join(e.dir, "new.qcow2")
	dev, _ = e.open(fresh, "--format", "qcow2", "--size", "32M")
	e.must("close", dev)
	if out := sh(t, "qemu-img", "info", "--output=json", fresh); !json.Valid([]byte(out)) {
		t.Fatalf("qemu-img info: %s", out)
	} else {
		var info struct {
			Format      string `json:"format"`
			VirtualSize int64  `json:"virtual-size"`
		}
		json.Unmarshal([]byte(out), &info)
		if info.Format != "qcow2" || info.VirtualSize != 32<<20 {
			t.Fatalf("created image: %+v", info)
		}
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Fatal(err)
	}
}
