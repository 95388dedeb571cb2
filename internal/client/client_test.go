package client

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"vdisk/internal/api"
)

// fakeDaemonEnv makes the test binary act as a daemon serving a fake API on
// the socket it names (see TestMain).
const fakeDaemonEnv = "VDISK_CLIENT_TEST_DAEMON"

func TestMain(m *testing.M) {
	if sock := os.Getenv(fakeDaemonEnv); sock != "" {
		ln, err := net.Listen("unix", sock)
		if err != nil {
			os.Stderr.WriteString("fake daemon: " + err.Error() + "\n")
			os.Exit(3)
		}
		http.Serve(ln, fakeAPI())
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// fakeAPI answers like a daemon with one disk.
func fakeAPI() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/version", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(api.VersionInfo{API: "v1", Version: "fake", PID: os.Getpid()})
	})
	mux.HandleFunc("GET /v1/disks", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(api.DiskList{Disks: []api.Disk{{ID: "0123456789ab", File: "/a.img"}}})
	})
	mux.HandleFunc("DELETE /v1/disks/{id}", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("force") != "true" {
			w.WriteHeader(http.StatusConflict)
			json.NewEncoder(w).Encode(api.Error{Code: api.CodeBusy, Message: "/dev/loop9 is in use"})
			return
		}
		json.NewEncoder(w).Encode(api.Disk{ID: r.PathValue("id")})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "teapot", http.StatusTeapot)
	})
	return mux
}

func serveFake(t *testing.T) *Client {
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: fakeAPI()}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-done })
	c := New(sock)
	t.Cleanup(c.Close)
	return c
}

func TestCalls(t *testing.T) {
	c := serveFake(t)
	ctx := context.Background()
	if v, err := c.Version(ctx); err != nil || v.Version != "fake" {
		t.Fatalf("version: %+v, %v", v, err)
	}
	if l, err := c.List(ctx); err != nil || len(l) != 1 || l[0].File != "/a.img" {
		t.Fatalf("list: %+v, %v", l, err)
	}
	_, err := c.CloseDisk(ctx, "0123456789ab", false)
	var e *api.Error
	if !errors.As(err, &e) || e.Code != api.CodeBusy || err.Error() != "/dev/loop9 is in use" {
		t.Fatalf("busy close: %v, want the daemon's code and message", err)
	}
	if d, err := c.CloseDisk(ctx, "0123456789ab", true); err != nil || d.ID != "0123456789ab" {
		t.Fatalf("forced close: %+v, %v", d, err)
	}
	// An answer that is not an api.Error still gives a clear error.
	if _, err := c.Inspect(ctx, api.InspectRequest{File: "/a"}); err == nil || !strings.Contains(err.Error(), "418") {
		t.Fatalf("non-API error answer: %v", err)
	}
}

func TestNoDaemon(t *testing.T) {
	c := New(filepath.Join(t.TempDir(), "none.sock"))
	defer c.Close()
	if _, err := c.List(context.Background()); !errors.Is(err, ErrNoDaemon) || !strings.Contains(err.Error(), "none.sock") {
		t.Fatalf("no daemon: %v", err)
	}
}

func TestSocketPath(t *testing.T) {
	t.Setenv(api.SocketEnv, "")
	t.Setenv(api.StateDirEnv, "")
	if SocketPath("") != api.DefaultSocket || StateDir("") != api.DefaultStateDir {
		t.Fatal("defaults")
	}
	t.Setenv(api.SocketEnv, "/env.sock")
	t.Setenv(api.StateDirEnv, "/env-state")
	if SocketPath("") != "/env.sock" || StateDir("") != "/env-state" {
		t.Fatal("environment")
	}
	if SocketPath("/flag.sock") != "/flag.sock" || StateDir("/flag") != "/flag" {
		t.Fatal("flags win")
	}
}

func TestEnsureStarts(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "d.sock")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(fakeDaemonEnv, sock)
	c := New(sock)
	defer c.Close()
	ctx := context.Background()
	if err := c.Ensure(ctx, Spawn{Exe: exe, Args: []string{"-test.run=^$"}, LogFile: filepath.Join(dir, "log", "d.log")}); err != nil {
		t.Fatal(err)
	}
	v, err := c.Version(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p, err := os.FindProcess(v.PID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Kill(); p.Wait() })
	if v.PID == os.Getpid() {
		t.Fatal("daemon runs in the test process")
	}
	// A second Ensure finds it running and starts nothing.
	if err := c.Ensure(ctx, Spawn{Exe: "/nonexistent", LogFile: filepath.Join(dir, "d.log")}); err != nil {
		t.Fatalf("ensure with a daemon running: %v", err)
	}
}

func TestEnsureReportsFailure(t *testing.T) {
	dir := t.TempDir()
	c := New(filepath.Join(dir, "d.sock"))
	defer c.Close()
	logf := filepath.Join(dir, "d.log")
	err := c.Ensure(context.Background(), Spawn{Exe: "/bin/sh", Args: []string{"-c", "echo 'vdisk: daemon: cannot frobnicate' >&2; exit 1"}, LogFile: logf})
	if !errors.Is(err, ErrDaemonStart) || !strings.Contains(err.Error(), "cannot frobnicate") || !strings.Contains(err.Error(), logf) {
		t.Fatalf("failed start: %v", err)
	}
	err = c.Ensure(context.Background(), Spawn{Exe: filepath.Join(dir, "missing-exe"), LogFile: logf})
	if !errors.Is(err, ErrDaemonStart) {
		t.Fatalf("missing executable: %v", err)
	}
}
