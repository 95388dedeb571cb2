package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"vdisk/internal/api"
	"vdisk/internal/image/imagetest"
)

// TestResizeOpen grows a raw disk (loop) and a qcow2 disk (FUSE and loop)
// while ext4 on it is mounted: the kernel's device takes the new size, the
// record and info say it, the file system grows into it (offline here: this
// container refuses ext4's online-resize ioctl) and keeps every file; the
// closed image has the new size. An open disk does not shrink.
func TestResizeOpen(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	for _, format := range []string{"raw", "qcow2"} {
		t.Run(format, func(t *testing.T) {
			e := newEnv(t)
			img := filepath.Join(e.dir, "grow."+format)
			mnt := filepath.Join(e.dir, "mnt")
			e.must("create", "-f", format, img, "--size", "64M")
			dev, id := e.open(img)
			sh(t, "mkfs.ext4", "-q", "-F", dev)
			mount(t, dev, mnt)
			sums := writeFiles(t, mnt, 5<<20, 4096)

			out := e.must("resize", img, "+64M")
			if !strings.Contains(out, "open as "+dev) {
				t.Fatalf("resize printed %q", out)
			}
			if got := strings.TrimSpace(sh(t, "blockdev", "--getsize64", dev)); got != "134217728" {
				t.Fatalf("%s is %s bytes after the resize, want 134217728", dev, got)
			}
			var d api.Disk
			if err := json.Unmarshal([]byte(e.must("info", "--json", id)), &d); err != nil {
				t.Fatal(err)
			}
			if d.Size != 128<<20 || d.Sectors != 128<<11 {
				t.Fatalf("record after the resize: size %d, sectors %d", d.Size, d.Sectors)
			}
			if err := os.Mkdir(filepath.Join(mnt, "more"), 0o755); err != nil {
				t.Fatal(err)
			}
			more := writeFiles(t, filepath.Join(mnt, "more"), 1<<20) // I/O goes on
			if _, errs, code := e.run("resize", id, "32M"); code == 0 || !strings.Contains(errs, "only grows") {
				t.Fatalf("shrinking an open disk: exit %d, %q", code, errs)
			}
			sh(t, "umount", mnt)
			sh(t, "resize2fs", "-f", dev)
			sh(t, "e2fsck", "-fn", dev)
			mount(t, dev, mnt)
			checkFiles(t, mnt, sums)
			checkFiles(t, filepath.Join(mnt, "more"), more)
			if f := strings.Fields(sh(t, "df", "-k", "--output=size", mnt)); len(f) != 2 || atoi(f[1]) < 100000 {
				t.Fatalf("df after resize2fs: %q, want about 120 MiB", f)
			}
			sh(t, "umount", mnt)
			e.must("close", id)
			if format == "raw" {
				if st, err := os.Stat(img); err != nil || st.Size() != 128<<20 {
					t.Fatalf("image after close: %v, %v", st, err)
				}
			} else {
				sh(t, "qemu-img", "check", img)
				if info := sh(t, "qemu-img", "info", img); !strings.Contains(info, "(134217728 bytes)") {
					t.Fatalf("qemu-img info:\n%s", info)
				}
			}
		})
	}
}

func atoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		return -1
	}
	return n
}
