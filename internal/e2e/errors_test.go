package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// wantFail runs vdisk (through mod, when set) and fails the test unless it
// exits non-zero with one line on stderr containing want.
func (e *env) wantFail(mod func(*exec.Cmd), want string, args ...string) {
	e.t.Helper()
	out, errs, code := e.runWith(mod, bin, args...)
	if code == 0 || out != "" || !strings.Contains(errs, want) || strings.Count(errs, "\n") != 1 || !strings.HasPrefix(errs, "vdisk: ") {
		e.t.Errorf("vdisk %s: exit %d, stdout %q, stderr %q; want one line with %q", strings.Join(args, " "), code, out, errs, want)
	}
}

func TestBadInput(t *testing.T) {
	e := newEnv(t)
	img := filepath.Join(e.dir, "x.img")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "directory", args: []string{"open", e.dir}, want: e.dir + " is a directory, not an image file"},
		{name: "device", args: []string{"open", "/dev/zero"}, want: "/dev/zero is a device, not an image file"},
		{name: "parent missing", args: []string{"open", filepath.Join(e.dir, "nodir", "x.img")}, want: "parent directory " + filepath.Join(e.dir, "nodir") + " does not exist"},
		{name: "invalid size", args: []string{"open", img, "--size", "ten"}, want: `invalid size "ten"`},
		{name: "unknown id", args: []string{"close", "0123456789ab"}, want: "unknown disk id 0123456789ab"},
		{name: "not open", args: []string{"close", img}, want: "is not an open disk's file, id or device"},
		{name: "unknown via", args: []string{"open", img, "--via", "iscsi"}, want: `--via "iscsi": want ublk, nbd, loop or fuse`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { e.wantFail(nil, tt.want, tt.args...) })
	}
	if _, err := os.Stat(img); !os.IsNotExist(err) {
		t.Fatalf("refused opens created %s: %v", img, err)
	}

	t.Run("already open", func(t *testing.T) {
		dev, id := e.open(img, "--size", "4M")
		e.wantFail(nil, "is already open as "+dev+" (id "+id+")", "open", img)
		e.must("close", img)
	})

	t.Run("not root", func(t *testing.T) {
		nobody := func(c *exec.Cmd) {
			c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		}
		e.wantFail(nobody, "vdisk: must run as root to manage disks (try sudo)", "open", img)
		e.wantFail(nobody, "must run as root", "list")
		e.wantFail(nobody, "must run as root", "daemon")
	})

	t.Run("locked by another process", func(t *testing.T) {
		locked := filepath.Join(e.dir, "locked.img")
		if err := os.WriteFile(locked, make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(locked)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
			t.Fatal(err)
		}
		e.wantFail(nil, "locked by another process", "open", locked)
	})

	t.Run("attached by losetup", func(t *testing.T) {
		other := filepath.Join(e.dir, "other.img")
		if err := os.WriteFile(other, make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
		dev := strings.TrimSpace(sh(t, "losetup", "-f", "--show", other))
		defer exec.Command("losetup", "-d", dev).Run()
		e.wantFail(nil, "is already attached to "+dev+" outside vdisk", "open", other)
	})

	t.Run("disk full on create", func(t *testing.T) {
		full := filepath.Join(e.dir, "full")
		if err := os.Mkdir(full, 0o700); err != nil {
			t.Fatal(err)
		}
		// A tmpfs with room for one inode besides its root.
		sh(t, "mount", "-t", "tmpfs", "-o", "size=1M,nr_inodes=2", "vdisk-e2e-full", full)
		defer exec.Command("umount", "-l", full).Run()
		if err := os.WriteFile(filepath.Join(full, "filler"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		e.wantFail(nil, "no space left", "open", filepath.Join(full, "new.img"))
	})

	t.Run("FUSE unavailable", func(t *testing.T) {
		// In a mount namespace where /dev/fuse is /dev/null the daemon
		// that the command starts has no FUSE.
		ns := newEnv(t)
		script := `mount --make-rprivate / && mount --bind /dev/null /dev/fuse && exec "$0" "$@"`
		ns.wantFailVia([]string{"unshare", "-m", "sh", "-c", script, bin}, "FUSE is not available", "open", filepath.Join(ns.dir, "f.img"), "--via", "fuse")
	})
}

// wantFailVia is wantFail for a vdisk run under a wrapper command.
func (e *env) wantFailVia(wrapper []string, want string, args ...string) {
	e.t.Helper()
	out, errs, code := e.runWith(nil, wrapper[0], append(wrapper[1:], args...)...)
	if code == 0 || out != "" || !strings.Contains(errs, want) || strings.Count(errs, "\n") != 1 {
		e.t.Errorf("%s %s: exit %d, stdout %q, stderr %q; want one line with %q", strings.Join(wrapper, " "), strings.Join(args, " "), code, out, errs, want)
	}
}
