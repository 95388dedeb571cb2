//go:build linux

package blockdev_test

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/blockdev/blockdevtest"
)

// flockRun runs flock(1) without waiting on path and reports whether it got
// the lock.
func flockRun(t *testing.T, path string, shared bool) bool {
	t.Helper()
	mode := "-x"
	if shared {
		mode = "-s"
	}
	err := exec.Command("flock", "-n", mode, path, "true").Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return true
	case errors.As(err, &ee) && ee.ExitCode() == 1:
		return false
	}
	t.Fatalf("flock %s %s: %v", mode, path, err)
	return false
}

func TestFileLocksBetweenProcesses(t *testing.T) {
	if _, err := exec.LookPath("flock"); err != nil {
		t.Skip("flock(1) from util-linux is not installed")
	}
	p := filepath.Join(t.TempDir(), "disk.img")
	w, err := blockdev.OpenFile(p, blockdev.FileOptions{Create: true, Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if flockRun(t, p, true) || flockRun(t, p, false) {
		t.Error("another process got a lock while a writer holds the image")
	}
	w.Close()
	r, err := blockdev.OpenFile(p, blockdev.FileOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if !flockRun(t, p, true) {
		t.Error("another process could not share the lock with a reader")
	}
	if flockRun(t, p, false) {
		t.Error("another process got the exclusive lock while a reader holds the image")
	}
	r.Close()

	// The other way round: a process holds the lock until its stdin closes.
	for _, mode := range []string{"-x", "-s"} {
		t.Run("held by flock "+mode, func(t *testing.T) {
			cmd := exec.Command("flock", mode, p, "sh", "-c", "echo locked; exec cat")
			stdin, err := cmd.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Wait()
			defer stdin.Close()
			if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "locked\n" {
				t.Fatalf("flock child said %q, %v", line, err)
			}
			if _, err := blockdev.OpenFile(p, blockdev.FileOptions{}); !errors.Is(err, blockdev.ErrLocked) {
				t.Errorf("writer open while another process holds %s: %v, want ErrLocked", mode, err)
			}
			r, err := blockdev.OpenFile(p, blockdev.FileOptions{ReadOnly: true})
			if mode == "-s" && err != nil {
				t.Errorf("reader open beside a shared lock: %v", err)
			}
			if mode == "-x" && !errors.Is(err, blockdev.ErrLocked) {
				t.Errorf("reader open beside an exclusive lock: %v, want ErrLocked", err)
			}
			if err == nil {
				r.Close()
			}
		})
	}
}

// mountTmpfs mounts a tmpfs with opts on a fresh directory, or skips when
// this process may not mount.
func mountTmpfs(t *testing.T, opts string) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, opts); err != nil {
		if errors.Is(err, syscall.EPERM) {
			t.Skipf("mount tmpfs: %v (needs root)", err)
		}
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

func TestFileNoSpace(t *testing.T) {
	dir := mountTmpfs(t, "size=1m")
	f, err := blockdev.OpenFile(filepath.Join(dir, "disk.img"), blockdev.FileOptions{Create: true, Size: 8 << 20})
	if err != nil {
		t.Fatalf("sparse create larger than the filesystem: %v", err)
	}
	defer f.Close()
	// tmpfs has no FALLOC_FL_ZERO_RANGE: WriteZeroes writes zero bytes.
	if err := f.WriteZeroes(0, 64<<10, false); err != nil {
		t.Fatalf("WriteZeroes on tmpfs: %v", err)
	}
	_, err = f.WriteAt(make([]byte, 2<<20), 1<<20)
	if !errors.Is(err, blockdev.ErrNoSpace) || blockdev.Errno(err) != syscall.ENOSPC {
		t.Errorf("write past the filesystem's space: %v (errno %v), want ErrNoSpace, ENOSPC", err, blockdev.Errno(err))
	}
}

func TestFileCreateNoSpace(t *testing.T) {
	dir := mountTmpfs(t, "size=1m,nr_inodes=4")
	// Use up the inodes.
	for i := range 8 {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprint(i)), nil, 0o600); err != nil {
			break
		}
	}
	_, err := blockdev.OpenFile(filepath.Join(dir, "disk.img"), blockdev.FileOptions{Create: true, Size: 1 << 20})
	if !errors.Is(err, blockdev.ErrNoSpace) || !strings.Contains(err.Error(), "disk.img") {
		t.Errorf("create on a full filesystem: %v, want ErrNoSpace naming the image", err)
	}
}

// loopDevice attaches a new file of size bytes to a loop device with the
// given sector size, or skips when the machine has no loop devices.
func loopDevice(t *testing.T, size int64, sectorSize int) string {
	t.Helper()
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skipf("no loop devices: %v", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("attaching a loop device needs root")
	}
	backing := filepath.Join(t.TempDir(), "backing.img")
	if err := os.WriteFile(backing, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(backing, size); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", "--sector-size", fmt.Sprint(sectorSize), backing).Output()
	if err != nil {
		t.Fatalf("losetup: %v", err)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	return dev
}

func TestFileOnBlockDevice(t *testing.T) {
	dev := loopDevice(t, 4<<20, 4096)
	f, err := blockdev.OpenFile(dev, blockdev.FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Size() != 4<<20 {
		t.Errorf("Size() = %d, want %d (BLKGETSIZE64)", f.Size(), 4<<20)
	}
	if in := f.Info(); in.LogicalBlockSize != 4096 || in.PhysicalBlockSize < 4096 {
		t.Errorf("Info() = %+v, want 4096-byte logical blocks", in)
	}
	if _, err := blockdev.OpenFile(dev, blockdev.FileOptions{}); !errors.Is(err, blockdev.ErrLocked) {
		t.Errorf("second writer on %s: %v, want ErrLocked", dev, err)
	}
}

func TestConformanceBlockDevice(t *testing.T) {
	blockdevtest.Run(t, func(t *testing.T, size int64) blockdev.Device {
		dev := loopDevice(t, size, 512)
		f, err := blockdev.OpenFile(dev, blockdev.FileOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return f
	})
}
