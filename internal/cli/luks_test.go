package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vdisk/internal/crypt/luks"
)

// fastLUKS are KDF flags cheap enough for tests.
var fastLUKS = []string{"--pbkdf", "argon2id", "--pbkdf-force-iterations", "4", "--pbkdf-memory", "64", "--pbkdf-parallel", "1"}

// runIn runs the command line with stdin.
func runIn(stdin string, args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = Main(context.Background(), args, strings.NewReader(stdin), &o, &e)
	return code, o.String(), e.String()
}

// luksTestPass asks cryptsetup whether pass (in a key file) opens img.
func luksTestPass(t *testing.T, img string, pass string) bool {
	t.Helper()
	kf := filepath.Join(t.TempDir(), "k")
	if err := os.WriteFile(kf, []byte(pass), 0o600); err != nil {
		t.Fatal(err)
	}
	return exec.Command("cryptsetup", "open", "--test-passphrase", "--key-file", kf, img).Run() == nil
}

func TestLUKSCommands(t *testing.T) {
	if _, err := exec.LookPath("cryptsetup"); err != nil {
		t.Skip("cryptsetup is not installed")
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "secret.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 32<<20); err != nil {
		t.Fatal(err)
	}
	k1 := filepath.Join(dir, "k1")
	k3 := filepath.Join(dir, "k3")
	os.WriteFile(k1, []byte("first key\n"), 0o600)
	os.WriteFile(k3, []byte("third key"), 0o600)

	args := append([]string{"luks", "format", img, "--key-file", k1, "--digest-iterations", "1000"}, fastLUKS...)
	if code, out, errs := runIn("", args...); code != 0 || !strings.Contains(out, "LUKS2, aes-xts-plain64, 512-bit key") {
		t.Fatalf("format: %d %q %q", code, out, errs)
	}
	if !luksTestPass(t, img, "first key\n") {
		t.Fatal("cryptsetup does not accept the key file")
	}
	if code, _, errs := runIn("", args...); code == 0 || !strings.Contains(errs, "--force") {
		t.Fatalf("second format without --force: %d %q", code, errs)
	}

	code, out, errs := runIn("", "luks", "dump", "--json", img)
	var in luks.Info
	if code != 0 || json.Unmarshal([]byte(out), &in) != nil || in.Version != 2 || len(in.Keyslots) != 1 {
		t.Fatalf("dump --json: %d %q %q", code, out, errs)
	}
	if strings.Contains(out, "salt") || strings.Contains(out, `"digest"`) {
		t.Fatalf("dump shows secrets-adjacent material:\n%s", out)
	}
	if code, out, _ := runIn("", "luks", "dump", img); code != 0 || !strings.Contains(out, "PBKDF:      argon2id") {
		t.Fatalf("dump: %d %q", code, out)
	}

	// The new passphrase from stdin.
	args = append([]string{"luks", "add-key", img, "--key-file", k1, "--new-key-file", "-"}, fastLUKS...)
	if code, out, errs := runIn("second key", args...); code != 0 || out != "added keyslot 1\n" {
		t.Fatalf("add-key: %d %q %q", code, out, errs)
	}
	if !luksTestPass(t, img, "second key") {
		t.Fatal("cryptsetup does not accept the added key")
	}
	args = append([]string{"luks", "change-key", img, "--key-file", "-", "--new-key-file", k3}, fastLUKS...)
	if code, out, errs := runIn("second key", args...); code != 0 || out != "changed the passphrase of keyslot 1\n" {
		t.Fatalf("change-key: %d %q %q", code, out, errs)
	}
	if luksTestPass(t, img, "second key") || !luksTestPass(t, img, "third key") {
		t.Fatal("cryptsetup does not see the changed key")
	}
	if code, _, errs := runIn("wrong", "luks", "remove-key", img, "--key-file", "-"); code == 0 || !strings.Contains(errs, "no key available with this passphrase") {
		t.Fatalf("remove-key with a wrong passphrase: %d %q", code, errs)
	}
	if code, out, errs := runIn("", "luks", "remove-key", img, "--key-file", k3); code != 0 || out != "removed keyslot 1\n" {
		t.Fatalf("remove-key: %d %q %q", code, out, errs)
	}
	if luksTestPass(t, img, "third key") {
		t.Fatal("cryptsetup still accepts the removed key")
	}
	if code, _, errs := runIn("", "luks", "remove-key", img, "--key-file", k1); code == 0 || !strings.Contains(errs, "last keyslot") {
		t.Fatalf("remove-key of the last keyslot: %d %q", code, errs)
	}
	if code, _, errs := runIn("", "luks", "add-key", img); code == 0 || !strings.Contains(errs, "--key-file") {
		t.Fatalf("add-key without a terminal or key file: %d %q", code, errs)
	}
	if code, _, errs := runIn("", "luks", "dump", k1); code == 0 || !strings.Contains(errs, "not a LUKS volume") {
		t.Fatalf("dump of a non-LUKS file: %d %q", code, errs)
	}
}

// TestLUKSInsideQcow2 formats a LUKS volume inside a qcow2 image's data:
// converted to raw by qemu-img, it is a volume cryptsetup accepts.
func TestLUKSInsideQcow2(t *testing.T) {
	for _, tool := range []string{"cryptsetup", "qemu-img"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
	dir := t.TempDir()
	img, raw, kf := filepath.Join(dir, "d.qcow2"), filepath.Join(dir, "d.raw"), filepath.Join(dir, "k")
	os.WriteFile(kf, []byte("in qcow2"), 0o600)
	if out, err := exec.Command("qemu-img", "create", "-f", "qcow2", img, "24M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v\n%s", err, out)
	}
	args := []string{"luks", "format", img, "--type", "luks1", "--key-file", kf, "--digest-iterations", "1000",
		"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"}
	if code, out, errs := runIn("", args...); code != 0 {
		t.Fatalf("format: %d %q %q", code, out, errs)
	}
	if code, out, _ := runIn("", "luks", "dump", img); code != 0 || !strings.Contains(out, "Version:       1") {
		t.Fatalf("dump: %d %q", code, out)
	}
	if out, err := exec.Command("qemu-img", "convert", "-O", "raw", img, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v\n%s", err, out)
	}
	if !luksTestPass(t, raw, "in qcow2") {
		t.Fatal("cryptsetup does not accept the volume inside the qcow2 image")
	}
}

// openPTY returns the master and the slave of a new pseudo-terminal.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return m, s
}

// TestLUKSPrompt types the passphrase at a terminal: it is read with echo
// off, asked twice for a new volume, and opens the volume.
func TestLUKSPrompt(t *testing.T) {
	if _, err := exec.LookPath("cryptsetup"); err != nil {
		t.Skip("cryptsetup is not installed")
	}
	master, slave := openPTY(t)
	img := filepath.Join(t.TempDir(), "p.img")
	if err := os.WriteFile(img, make([]byte, 20<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	type result struct {
		code         int
		stdout, errs string
	}
	done := make(chan result, 1)
	go func() {
		var o, e bytes.Buffer
		args := append([]string{"luks", "format", img, "--digest-iterations", "1000"}, fastLUKS...)
		code := Main(context.Background(), args, slave, &o, &e)
		done <- result{code, o.String(), e.String()}
	}()
	// Type only once echo is off, so that what is typed is never echoed.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Millisecond) {
		tio, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
		if err != nil {
			t.Fatal(err)
		}
		if tio.Lflag&unix.ECHO == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the prompt never turned echo off")
		}
	}
	if _, err := master.Write([]byte("typed secret\ntyped secret\n")); err != nil {
		t.Fatal(err)
	}
	var r result
	select {
	case r = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("format did not finish")
	}
	if r.code != 0 || !strings.Contains(r.errs, "Enter passphrase") || !strings.Contains(r.errs, "Verify passphrase") {
		t.Fatalf("format at a terminal: %d %q %q", r.code, r.stdout, r.errs)
	}
	// Whatever the terminal echoed is in the master's buffer by now.
	rc, err := master.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var echo []byte
	rc.Control(func(fd uintptr) {
		buf := make([]byte, 4096)
		unix.SetNonblock(int(fd), true)
		for {
			n, err := unix.Read(int(fd), buf)
			if n <= 0 || err != nil {
				return
			}
			echo = append(echo, buf[:n]...)
		}
	})
	if bytes.Contains(echo, []byte("typed")) {
		t.Fatalf("the passphrase was echoed: %q", echo)
	}
	if !luksTestPass(t, img, "typed secret") {
		t.Fatal("cryptsetup does not accept the typed passphrase")
	}
}
