package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"vdisk/internal/api"
	"vdisk/internal/client"
)

// testDaemon is a daemon served in-process on a socket in a temporary
// directory.
type testDaemon struct {
	d        *Daemon
	c        *client.Client
	dir      string // scratch directory for image files
	stateDir string
	socket   string
	stop     func() // shuts the daemon down (closing its disks) and waits
}

// needKernel skips a test that needs root and the loop driver.
func needKernel(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to attach loop devices")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skipf("no loop driver: %v", err)
	}
}

// logger returns a logger writing to the test log.
func logger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// startDaemon serves a daemon whose state lives in stateDir (a new one
// when empty). It is shut down at cleanup.
func startDaemon(t *testing.T, stateDir string) *testDaemon {
	t.Helper()
	return startDaemonProbe(t, stateDir, nil)
}

// startDaemonProbe is startDaemon with the kernel's attach paths as probe
// reports them (nil: the real kernel's).
func startDaemonProbe(t *testing.T, stateDir string, probe func() kernelPaths) *testDaemon {
	t.Helper()
	return startDaemonWith(t, stateDir, probe, nil)
}

// startDaemonWith is startDaemonProbe with options set by opt (nil: the
// defaults).
func startDaemonWith(t *testing.T, stateDir string, probe func() kernelPaths, opt func(*Options)) *testDaemon {
	t.Helper()
	base := t.TempDir()
	if stateDir == "" {
		stateDir = filepath.Join(base, "state")
	}
	td := &testDaemon{dir: filepath.Join(base, "img"), stateDir: stateDir, socket: filepath.Join(base, "run", "vdisk.sock")}
	if err := os.Mkdir(td.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	o := Options{Socket: td.socket, StateDir: stateDir, Version: "test", Logger: logger(t)}
	if opt != nil {
		opt(&o)
	}
	d, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if probe != nil {
		d.probe = probe
	}
	ln, unlock, err := listen(td.socket)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, ln) }()
	stopped := false
	td.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		unlock()
	}
	t.Cleanup(td.stop)
	td.d = d
	td.c = client.New(td.socket)
	t.Cleanup(td.c.Close)
	if _, err := td.c.Version(context.Background()); err != nil {
		t.Fatal(err)
	}
	return td
}

// wantCode fails unless err is an *api.Error with code.
func wantCode(t *testing.T, err error, code string) *api.Error {
	t.Helper()
	var e *api.Error
	if !errors.As(err, &e) || e.Code != code {
		t.Fatalf("error %v (%T), want code %s", err, err, code)
	}
	return e
}

// readAllAt reads n bytes at off from the file.
func readAllAt(t *testing.T, name string, off int64, n int) []byte {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	return b
}
