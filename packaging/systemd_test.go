package packaging

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"vdisk/internal/image/imagetest"
)

// vdiskBinary builds cmd/vdisk once per test process.
var vdiskBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "vdisk-packaging-test")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "vdisk")
	out, err := exec.Command("go", "build", "-o", bin, "vdisk/cmd/vdisk").CombinedOutput()
	if err != nil {
		return "", &buildError{out}
	}
	return bin, nil
})

type buildError struct{ out []byte }

func (e *buildError) Error() string { return "go build: " + string(e.out) }

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("needs root (CI runs as root)")
		}
		t.Skip("needs root")
	}
}

// TestUnitsVerify: systemd-analyze verify accepts every unit, with
// ExecStart pointed at a freshly built vdisk (the installed package is
// checked as it is by scripts/package-test.sh).
func TestUnitsVerify(t *testing.T) {
	imagetest.NeedTool(t, "systemd-analyze")
	bin, err := vdiskBinary()
	if err != nil {
		t.Fatal(err)
	}
	units, err := filepath.Glob("systemd/*")
	if err != nil || len(units) < 3 {
		t.Fatalf("units: %v, %v", units, err)
	}
	dir := t.TempDir()
	var args []string
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		b = bytes.ReplaceAll(b, []byte("/usr/bin/vdisk"), []byte(bin))
		out := filepath.Join(dir, filepath.Base(u))
		if err := os.WriteFile(out, b, 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, out)
	}
	// --man=no: the man pages come with the package, not with the tree.
	cmd := exec.Command("systemd-analyze", append([]string{"verify", "--man=no"}, args...)...)
	cmd.Dir = dir // vdisk.service names vdisk.socket: both are here
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestDaemonSocketActivation: the daemon started by
// systemd-socket-activate (as vdisk.socket would) serves the socket it is
// passed, tells NOTIFY_SOCKET READY=1, and on SIGTERM STOPPING=1, then
// exits 0.
func TestDaemonSocketActivation(t *testing.T) {
	needRoot(t)
	imagetest.NeedTool(t, "systemd-socket-activate")
	bin, err := vdiskBinary()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "run", "vdisk.sock")
	if err := os.Mkdir(filepath.Dir(sock), 0o700); err != nil {
		t.Fatal(err)
	}
	notifyPath := filepath.Join(dir, "notify")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	states := make(chan string, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := notify.Read(buf)
			if err != nil {
				close(states)
				return
			}
			sc := bufio.NewScanner(bytes.NewReader(buf[:n]))
			for sc.Scan() {
				states <- sc.Text()
			}
		}
	}()

	cmd := exec.Command("systemd-socket-activate", "-l", sock, "-E", "NOTIFY_SOCKET="+notifyPath,
		bin, "daemon", "--state-dir", filepath.Join(dir, "state"), "--log-level", "debug")
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-exited
	}()
	// systemd-socket-activate listens first, then starts the daemon on
	// the first connection.
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	deadline := time.Now().Add(time.Minute)
	var resp *http.Response
	for {
		resp, err = hc.Get("http://vdisk/v1/version")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no answer on the activated socket: %v\n%s", err, log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/version: %s", resp.Status)
	}
	wantState := func(want string) {
		t.Helper()
		timeout := time.After(time.Minute)
		for {
			select {
			case s, ok := <-states:
				if !ok {
					t.Fatalf("notify socket closed before %s", want)
				}
				if s == want {
					return
				}
			case <-timeout:
				t.Fatalf("no %s on NOTIFY_SOCKET\n%s", want, log.String())
			}
		}
	}
	wantState("READY=1")
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	wantState("STOPPING=1")
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("daemon exited: %v\n%s", err, log.String())
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("daemon did not exit after SIGTERM\n%s", log.String())
	}
	exited <- nil
	if !strings.Contains(log.String(), "socket activation") {
		t.Errorf("the daemon did not say it serves the socket systemd passed:\n%s", log.String())
	}
}
