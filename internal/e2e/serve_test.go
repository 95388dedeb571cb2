package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// served is a `vdisk serve` running in the background.
type served struct {
	cmd    *exec.Cmd
	uri    string
	stderr *syncBuffer
	done   chan struct{} // closed when the process has ended
}

// startServe runs vdisk serve on a new unix socket with args (mod, when
// not nil, adjusts the command first) and waits until it listens or
// exits; the test's own timeout bounds the wait, never a clock here.
func startServe(t *testing.T, mod func(*exec.Cmd), args ...string) *served {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	cmd := exec.Command(bin, append([]string{"serve", "--unix", sock}, args...)...)
	if mod != nil {
		mod(cmd)
	}
	cmd.Env = append(os.Environ(), cmd.Env...)
	s := &served{cmd: cmd, uri: "nbd+unix:///?socket=" + sock, stderr: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stderr = s.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); close(s.done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-s.done })
	for {
		if _, err := os.Stat(sock); err == nil {
			return s
		}
		select {
		case <-s.done:
			t.Fatalf("vdisk serve %v exited: %s", args, s.stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stop sends SIGTERM, waits for serve to end (it flushes and closes its
// images), and fails the test unless it ended well.
func (s *served) stop(t *testing.T) {
	t.Helper()
	s.cmd.Process.Signal(syscall.SIGTERM)
	<-s.done
	if !s.cmd.ProcessState.Success() {
		t.Fatalf("vdisk serve: %v: %s", s.cmd.ProcessState, s.stderr.String())
	}
}

// kill ends serve with SIGKILL and waits for it.
func (s *served) kill() {
	s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.done
}
