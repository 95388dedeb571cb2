package daemon

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// needRootT skips (fails in CI) unless the test runs as root.
func needRootT(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (CI runs as root)")
		}
		t.Skip("needs root")
	}
}

func TestSocketDir(t *testing.T) {
	base := t.TempDir()
	// A new directory is made 0700, whatever the umask.
	fresh := filepath.Join(base, "new", "run")
	if err := socketDir(fresh); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(fresh); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("new socket directory: %v, %v; want mode 0700", fi.Mode(), err)
	}
	// An existing one that others can write to is refused.
	open := filepath.Join(base, "open")
	if err := os.Mkdir(open, 0o700); err != nil {
		t.Fatal(err)
	}
	os.Chmod(open, 0o777)
	if err := socketDir(open); err == nil || !strings.Contains(err.Error(), "writable by others") {
		t.Fatalf("world-writable socket directory: %v, want a refusal", err)
	}
	if _, _, err := listen(filepath.Join(open, "vdisk.sock")); err == nil {
		t.Fatal("listen in a world-writable directory succeeded")
	}
	// A symlink to a directory is refused.
	link := filepath.Join(base, "link")
	if err := os.Symlink(fresh, link); err != nil {
		t.Fatal(err)
	}
	if err := socketDir(link); err == nil {
		t.Fatal("a symlinked socket directory was accepted")
	}
	// One owned by another user is refused.
	needRootT(t)
	other := filepath.Join(base, "other")
	if err := os.Mkdir(other, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(other, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if err := socketDir(other); err == nil || !strings.Contains(err.Error(), "belongs to uid 65534") {
		t.Fatalf("socket directory of another user: %v, want a refusal", err)
	}
}

// TestSocketUmask: the socket is 0600 from the start, even under a
// permissive umask.
func TestSocketUmask(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	sock := filepath.Join(t.TempDir(), "run", "vdisk.sock")
	ln, unlock, err := listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	defer ln.Close()
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v, %v; want 0600", fi.Mode(), err)
	}
	if fi, err := os.Stat(filepath.Dir(sock)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("socket directory %v, %v; want 0700", fi.Mode(), err)
	}
}

// TestPeerRefused: a process that is not root (nobody), even one that can
// reach the socket, is refused with a clear answer; root is served.
func TestPeerRefused(t *testing.T) {
	needRootT(t)
	for _, tool := range []string{"setpriv", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is missing", tool)
			}
			t.Skipf("%s is missing", tool)
		}
	}
	td := startDaemon(t, "")
	// Let anyone reach the socket, so that only SO_PEERCRED stands in
	// the way.
	dir := filepath.Dir(td.socket)
	for _, p := range []string{filepath.Dir(filepath.Dir(dir)), filepath.Dir(dir), dir} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(td.socket, 0o666); err != nil {
		t.Fatal(err)
	}
	curl := func(asNobody bool) (string, error) {
		args := []string{"curl", "-sS", "-w", " %{http_code}", "--unix-socket", td.socket, "http://vdisk/v1/version"}
		if asNobody {
			args = append([]string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"}, args...)
		}
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		return string(out), err
	}
	out, err := curl(true)
	if err != nil {
		t.Fatalf("curl as nobody: %v\n%s", err, out)
	}
	if !strings.HasSuffix(out, " 403") || !strings.Contains(out, `"permission"`) || !strings.Contains(out, "uid 65534 is refused") {
		t.Fatalf("nobody got %q, want a 403 permission refusal naming the uid", out)
	}
	out, err = curl(false)
	if err != nil || !strings.HasSuffix(out, " 200") {
		t.Fatalf("root got %q, %v; want 200", out, err)
	}
	// The metrics answer on the control socket too.
	mout, err := exec.Command("curl", "-sS", "--unix-socket", td.socket, "http://vdisk/metrics").CombinedOutput()
	if err != nil || !strings.Contains(string(mout), "go_goroutines") {
		t.Fatalf("GET /metrics on the control socket: %v\n%.400s", err, mout)
	}
}
