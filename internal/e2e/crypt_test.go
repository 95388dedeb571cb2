package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"vdisk/internal/api"
)

// newEncrypted creates an encrypted raw image of 64 MiB with a cheap KDF and
// returns it with its key file.
func newEncrypted(t *testing.T, e *env) (img, key string) {
	t.Helper()
	img, key = filepath.Join(e.dir, "secret.img"), filepath.Join(e.dir, "key")
	if err := os.WriteFile(key, []byte("e2e passphrase, not on the command line"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.must("create", "--encrypt", "luks2", "--key-file", key, "--pbkdf-force-iterations", "4", "--pbkdf-memory", "32768", img, "--size", "64M")
	return img, key
}

// listDisks returns vdisk list --json.
func listDisks(t *testing.T, e *env) []api.Disk {
	t.Helper()
	var l api.DiskList
	if err := json.Unmarshal([]byte(e.must("list", "--json")), &l); err != nil {
		t.Fatal(err)
	}
	return l.Disks
}

// TestEncryptedOpen: vdisk open --key-file on a LUKS2 image → mkfs → mount
// → write → close; cryptsetup accepts the key; the image holds no
// plaintext; reopen → the data is there.
func TestEncryptedOpen(t *testing.T) {
	e := newEnv(t)
	img, key := newEncrypted(t, e)
	mnt := filepath.Join(e.dir, "mnt")

	dev, id := e.open(img, "--key-file", key)
	if d := listDisks(t, e); len(d) != 1 || !d[0].Encrypted || d[0].Via == api.ViaLoop || d[0].Size != 64<<20 {
		t.Fatalf("list: %+v, want one encrypted 64 MiB disk not via loop", d)
	}
	sh(t, "mkfs.ext4", "-q", "-F", dev)
	mount(t, dev, mnt)
	marker := bytes.Repeat([]byte("vdisk plaintext marker "), 200)
	if err := os.WriteFile(filepath.Join(mnt, "marker"), marker, 0o600); err != nil {
		t.Fatal(err)
	}
	sums := writeFiles(t, mnt, 3<<20, 4096)
	sh(t, "umount", mnt)
	e.must("close", id)

	sh(t, "cryptsetup", "open", "--test-passphrase", "--key-file", key, img)
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, marker[:46]) {
		t.Fatal("the image file holds the plaintext")
	}

	// The key from stdin this time.
	out, errs, code := e.runWith(func(c *exec.Cmd) {
		k, err := os.Open(key)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { k.Close() })
		c.Stdin = k
	}, bin, "open", img, "--key-file", "-")
	if f := strings.Fields(out); code != 0 || len(f) != 2 {
		t.Fatalf("open --key-file -: exit %d, %q, %s", code, out, errs)
	} else {
		dev, id = f[0], f[1]
	}
	sh(t, "e2fsck", "-fn", dev)
	mount(t, dev, mnt)
	checkFiles(t, mnt, sums)
	sh(t, "umount", mnt)
	e.must("close", id)
}

// TestEncryptedOpenErrors: a wrong key, and no key without a terminal, are
// one-line errors, and nothing stays open.
func TestEncryptedOpenErrors(t *testing.T) {
	e := newEnv(t)
	img, _ := newEncrypted(t, e)
	wrong := filepath.Join(e.dir, "wrong")
	if err := os.WriteFile(wrong, []byte("not the passphrase"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "wrong key", args: []string{"open", img, "--key-file", wrong}, want: "no key available with this passphrase"},
		{name: "no key no terminal", args: []string{"open", img}, want: "no terminal to ask for the passphrase on"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Stdin is /dev/null: not a terminal.
			_, errs, code := e.runWith(func(c *exec.Cmd) { c.Stdin = nil }, bin, tt.args...)
			if code == 0 || !strings.Contains(errs, tt.want) || strings.Count(strings.TrimSpace(errs), "\n") != 0 {
				t.Fatalf("exit %d, stderr %q: want one line with %q", code, errs, tt.want)
			}
		})
	}
	if d := listDisks(t, e); len(d) != 0 {
		t.Fatalf("failed opens left disks: %+v", d)
	}
}

// TestEncryptedRestart: after kill -9 of the daemon, the next one lists the
// encrypted disk locked with the reason; open with the key unlocks it and
// the fsynced data is intact.
func TestEncryptedRestart(t *testing.T) {
	e := newEnv(t)
	img, key := newEncrypted(t, e)
	mnt := filepath.Join(e.dir, "mnt")
	dev, id := e.open(img, "--key-file", key)
	sh(t, "mkfs.ext4", "-q", "-F", dev)
	mount(t, dev, mnt)
	sums := writeFiles(t, mnt, 2<<20, 4096)
	for name := range sums {
		fsyncFile(t, filepath.Join(mnt, name))
	}
	fsyncFile(t, mnt)

	pid := e.daemonPID()
	if pid == 0 {
		t.Fatal("no daemon")
	}
	e.stopDaemon(pid, syscall.SIGKILL)
	sh(t, "umount", "-l", mnt) // its FUSE server died with the daemon

	l := listDisks(t, e)
	if len(l) != 1 || l[0].ID != id || l[0].State != api.StateLocked || !l[0].Encrypted ||
		l[0].Error != "encrypted: run vdisk open FILE again to unlock" {
		t.Fatalf("after restart: %+v, want the disk locked", l)
	}
	if out := e.must("list"); !strings.Contains(out, "(locked)") {
		t.Fatalf("vdisk list does not show the lock:\n%s", out)
	}
	st, err := os.ReadFile(filepath.Join(e.stateDir, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	if k, _ := os.ReadFile(key); bytes.Contains(st, k) {
		t.Fatalf("the state file holds the passphrase:\n%s", st)
	}

	dev2, id2 := e.open(img, "--key-file", key)
	if id2 != id {
		t.Fatalf("unlocked as %s, was %s", id2, id)
	}
	mount(t, dev2, mnt)
	checkFiles(t, mnt, sums)
	sh(t, "umount", mnt)
	sh(t, "e2fsck", "-fn", dev2)
	e.must("close", id)
	if d := listDisks(t, e); len(d) != 0 {
		t.Fatalf("after close: %+v", d)
	}
}
