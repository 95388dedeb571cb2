package cli

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"vdisk/internal/client"
	"vdisk/internal/daemon"
)

// daemonWait bounds the wait for an in-process daemon to answer.
const daemonWait = 20 * time.Second

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

// inProcessDaemon runs a daemon in the test process on a socket in a
// temporary directory and returns the socket and a scratch directory (with
// symbolic links resolved) for images. Every disk is closed at cleanup.
func inProcessDaemon(t *testing.T) (socket, dir string) {
	t.Helper()
	needKernel(t)
	base, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	socket = filepath.Join(base, "run", "vdisk.sock")
	dir = filepath.Join(base, "img")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	log := slog.New(slog.NewTextHandler(testLog{t}, nil))
	go func() {
		done <- daemon.Run(ctx, daemon.Options{Socket: socket, StateDir: filepath.Join(base, "state"), Version: "test", Logger: log})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon: %v", err)
		}
	})
	c := client.New(socket)
	defer c.Close()
	deadline := time.Now().Add(daemonWait)
	for {
		_, err := c.Version(ctx)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("in-process daemon did not answer in %v: %v", daemonWait, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return socket, dir
}

type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

func TestDaemonCommandRefusesSecond(t *testing.T) {
	socket, _ := inProcessDaemon(t)
	code, _, errs := run(t, "daemon", "--socket", socket, "--state-dir", t.TempDir())
	if code == 0 || errs != "vdisk: daemon: another vdisk daemon is running on "+socket+"\n" {
		t.Fatalf("second daemon: code %d, stderr %q", code, errs)
	}
}
