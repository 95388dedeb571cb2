package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"vdisk/internal/api"
)

// TestCrashSafety kills the daemon with SIGKILL after an fsync-acknowledged
// write through a mounted file system; a new daemon restores the disk, and
// the data is there and the file system clean.
func TestCrashSafety(t *testing.T) {
	for _, via := range vias {
		t.Run(via, func(t *testing.T) {
			e := newEnv(t)
			img := filepath.Join(e.dir, "crash.img")
			mnt := filepath.Join(e.dir, "mnt")
			dev, id := e.open(img, "--size", "64M", "--via", via)
			sh(t, "mkfs.ext4", "-q", "-F", dev)
			mount(t, dev, mnt)
			sums := writeFiles(t, mnt, 2<<20, 4096)
			for name := range sums {
				fsyncFile(t, filepath.Join(mnt, name))
			}
			fsyncFile(t, mnt) // the directory entries

			pid := e.daemonPID()
			if pid == 0 {
				t.Fatal("no daemon")
			}
			e.stopDaemon(pid, syscall.SIGKILL)
			if via == "fuse" {
				// The FUSE server died with the daemon: this mount's
				// device is gone for good.
				sh(t, "umount", "-l", mnt)
			}

			// Any command starts a new daemon, which restores the disk.
			var l api.DiskList
			if err := json.Unmarshal([]byte(e.must("list", "--json")), &l); err != nil {
				t.Fatal(err)
			}
			if len(l.Disks) != 1 || l.Disks[0].ID != id || l.Disks[0].State != api.StateOpen || l.Disks[0].Via != via {
				t.Fatalf("after restart: %+v", l.Disks)
			}
			if pid2 := e.daemonPID(); pid2 == pid || pid2 == 0 {
				t.Fatalf("daemon pid %d after restart, was %d", pid2, pid)
			}
			dev2 := l.Disks[0].Device
			if via == "loop" {
				if dev2 != dev {
					t.Fatalf("loop disk restored on %s, was %s: not adopted", dev2, dev)
				}
				sh(t, "umount", mnt) // still mounted: the kernel never noticed
			}
			mount(t, dev2, mnt) // replays the journal where needed
			checkFiles(t, mnt, sums)
			sh(t, "umount", mnt)
			sh(t, "e2fsck", "-fn", dev2)
			e.must("close", id)
			sh(t, "e2fsck", "-fn", img)
		})
	}
}

// fsyncFile opens name and fsyncs it.
func fsyncFile(t *testing.T, name string) {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync %s: %v", name, err)
	}
}

// TestSigtermClosesAll stops the daemon with SIGTERM: every disk is
// flushed and detached, and the state is empty.
func TestSigtermClosesAll(t *testing.T) {
	e := newEnv(t)
	a, b := filepath.Join(e.dir, "a.img"), filepath.Join(e.dir, "b.img")
	devA, _ := e.open(a, "--size", "8M")
	devB, _ := e.open(b, "--size", "8M", "--via", "fuse")
	for _, dev := range []string{devA, devB} {
		f, err := os.OpenFile(dev, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteAt([]byte("before sigterm"), 0)
		f.Close() // the last close of a block device writes its dirty pages back
	}
	e.stopDaemon(e.daemonPID(), syscall.SIGTERM)
	for _, img := range []string{a, b} {
		b := make([]byte, 14)
		f, _ := os.Open(img)
		f.ReadAt(b, 0)
		f.Close()
		if string(b) != "before sigterm" {
			t.Errorf("%s holds %q", img, b)
		}
		if out, _ := exec.Command("losetup", "-j", img).Output(); len(out) != 0 {
			t.Errorf("%s still attached: %s", img, out)
		}
	}
	st, err := os.ReadFile(filepath.Join(e.stateDir, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct{ Disks []json.RawMessage }
	if err := json.Unmarshal(st, &doc); err != nil || len(doc.Disks) != 0 {
		t.Fatalf("state after SIGTERM: %s", st)
	}
}
