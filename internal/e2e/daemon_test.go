package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// TestConcurrentAutostart runs several commands at once with no daemon:
// each starts one, one wins the socket, and every command succeeds.
func TestConcurrentAutostart(t *testing.T) {
	e := newEnv(t)
	const n = 4
	var wg sync.WaitGroup
	errs := make([]string, n)
	codes := make([]int, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i], codes[i] = e.run("list")
		}()
	}
	wg.Wait()
	for i := range n {
		if codes[i] != 0 {
			t.Errorf("command %d: exit %d: %s", i, codes[i], errs[i])
		}
	}
	if e.daemonPID() == 0 {
		t.Fatal("no daemon answers")
	}
	// The socket is root's alone.
	fi, err := os.Stat(e.socket)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v, %v; want mode 0600", fi, err)
	}
	// A second daemon is refused while the first runs.
	_, errs2, code := e.run("daemon")
	if code == 0 || !strings.Contains(errs2, "another vdisk daemon is running") {
		t.Fatalf("second daemon: exit %d, %q", code, errs2)
	}
	log, _ := os.ReadFile(filepath.Join(e.base, "run", "vdisk-daemon.log"))
	if got := strings.Count(string(log), "vdisk daemon ready"); got != 1 {
		t.Fatalf("%d daemons became ready, want 1:\n%s", got, log)
	}
}
