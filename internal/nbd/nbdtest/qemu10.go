// Package nbdtest holds test helpers for NBD peers.
package nbdtest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Interop with qemu 10, whose NBD client and server negotiate extended
// headers. The system's qemu is 7.2; ../shared/peers/qemu10.sh (relative
// to the repository root: beside the clone, or in a git worktree beside
// the main checkout) unpacks qemu-img, qemu-io and qemu-nbd 10 beside it
// and prints their directory. Qemu10 runs it, so a fresh machine works; it
// needs root and apt the first time (later it only prints the directory).

var qemu10 struct {
	once sync.Once
	dir  string
	err  error
}

// Qemu10 returns the directory of the qemu 10 tools (qemu-img, qemu-io,
// qemu-nbd, qemu-storage-daemon), unpacking them on first use. Without
// them the test is skipped, or fails under CI.
func Qemu10(t testing.TB) string {
	t.Helper()
	qemu10.once.Do(func() { qemu10.dir, qemu10.err = unpackQemu10() })
	if qemu10.err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("qemu 10: %v", qemu10.err)
		}
		t.Skipf("qemu 10: %v", qemu10.err)
	}
	return qemu10.dir
}

func unpackQemu10() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the test's directory")
		}
		dir = parent
	}
	// ../shared beside the clone; in a git worktree, beside the main
	// checkout (the parent of the common .git directory).
	candidates := []string{filepath.Join(dir, "..", "shared", "peers", "qemu10.sh")}
	if out, err := exec.Command("git", "-C", dir, "rev-parse", "--path-format=absolute", "--git-common-dir").Output(); err == nil {
		main := filepath.Dir(strings.TrimSpace(string(out)))
		candidates = append(candidates, filepath.Join(main, "..", "shared", "peers", "qemu10.sh"))
	}
	script := ""
	for _, c := range candidates {
		if _, err := os.Stat(c); err == nil {
			script = c
			break
		}
	}
	if script == "" {
		return "", fmt.Errorf("the unpack script is not at %s", strings.Join(candidates, " nor "))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s: %v: %s", script, err, stderr.String())
	}
	lines := strings.Fields(string(out))
	if len(lines) == 0 {
		return "", fmt.Errorf("%s printed no directory", script)
	}
	bin := lines[len(lines)-1]
	for _, tool := range []string{"qemu-img", "qemu-io", "qemu-nbd"} {
		if _, err := os.Stat(filepath.Join(bin, tool)); err != nil {
			return "", err
		}
	}
	return bin, nil
}
