// Package vmtest runs a test script inside the project's qemu test guest
// (../shared/vm: a Debian 6.12 kernel with nbd and ublk_drv under TCG), for
// tests of kernel paths this host's kernel lacks.
//
// A test calls Run with a busybox sh script and the Go packages to build; Run
// builds them statically into a fresh share directory, writes test.sh there,
// boots the guest through run.sh and fails the test unless the script exits 0.
// Guests run one at a time: Run holds an exclusive flock on CACHEDIR.lock
// while it prepares and boots, so parallel test binaries queue up.
//
// Skips: Run skips (with the reason) when VDISK_SKIP_VM=1 (even in CI: an
// explicit request), when not root, in -short mode, when the
// cache was never prepared and VMTEST_CACHE is unset, when prepare.sh fails,
// or when the test needs ublk and the guest kernel has none. With CI=true it
// never skips: each of those is a test failure, and it prepares the cache
// (VMTEST_CACHE, else /var/cache/vmtest) itself.
package vmtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Exit statuses of run.sh with a meaning of their own (see vm/README.md).
const (
	statusTimeout   = 124 // test.sh did not finish in time
	statusNoReport  = 125 // the guest never reported test.sh's status
	defaultCache    = "/var/cache/vmtest"
	defaultTimeout  = 300 * time.Second
	cancelGrace     = 30 * time.Second // run.sh's SIGTERM cleanup takes at most ~5 s
	deadlineReserve = 20 * time.Second // kept from the test's deadline for cleanup and logs
)

const (
	// guestStarted is what guest-init.sh prints just before it runs test.sh.
	guestStarted = "running /share/test.sh"
	// maxBoots bounds the boots of one Run when the guest dies before it
	// starts test.sh.
	maxBoots = 3
)

// DeviceChecks is a part of a guest script that exercises the block
// device $DEV (at least 48 MiB, writable) as every kernel path must serve
// it: an O_DIRECT pattern written and read back, blkdiscard of part of it
// (zeroes there, the rest intact), and six parallel O_DIRECT writers and
// readers on disjoint ranges. The script defines step and fail.
const DeviceChecks = `step "O_DIRECT pattern write and read back"
dd if=/dev/urandom of=/tmp/pattern bs=64k count=64 2>/dev/null
dd if=/tmp/pattern of=$DEV bs=64k seek=500 oflag=direct conv=fsync 2>/dev/null || fail "raw write"
want=$(md5sum </tmp/pattern)
got=$(dd if=$DEV bs=64k skip=500 count=64 iflag=direct 2>/dev/null | md5sum)
[ "$got" = "$want" ] || fail "read back differs"

step "blkdiscard: the range reads as zeroes, the rest of the pattern stays"
blkdiscard -o $((500 * 65536)) -l 1048576 $DEV || fail "blkdiscard"
zero=$(dd if=/dev/zero bs=64k count=16 2>/dev/null | md5sum)
got=$(dd if=$DEV bs=64k skip=500 count=16 iflag=direct 2>/dev/null | md5sum)
[ "$got" = "$zero" ] || fail "discarded range does not read as zeroes"
want=$(dd if=/tmp/pattern bs=64k skip=16 count=48 2>/dev/null | md5sum)
got=$(dd if=$DEV bs=64k skip=516 count=48 iflag=direct 2>/dev/null | md5sum)
[ "$got" = "$want" ] || fail "data after the discarded range changed"

step "parallel O_DIRECT writers and readers on disjoint ranges"
pids=
for i in 1 2 3 4 5 6; do
	dd if=/dev/urandom of=/tmp/par$i bs=64k count=8 2>/dev/null
	dd if=/tmp/par$i of=$DEV bs=64k seek=$((600 + i * 8)) oflag=direct 2>/dev/null &
	pids="$pids $!"
done
for p in $pids; do wait $p || fail "parallel write"; done
pids=
for i in 1 2 3 4 5 6; do
	(dd if=$DEV bs=64k skip=$((600 + i * 8)) count=8 iflag=direct 2>/dev/null | md5sum >/tmp/got$i) &
	pids="$pids $!"
done
for p in $pids; do wait $p || fail "parallel read"; done
for i in 1 2 3 4 5 6; do
	[ "$(cat /tmp/got$i)" = "$(md5sum </tmp/par$i)" ] || fail "parallel range $i differs"
done
`

// extraModules are the guest modules every test gets besides prepare.sh's
// own: one list for all, so that the cached image is built once.
// isofs mounts the ISO images vdisk serves (the host kernel has none).
const extraModules = "isofs"

// Binary is a Go package Run builds statically (CGO_ENABLED=0) into the share
// directory.
type Binary struct {
	// Pkg is the package's import path, e.g. "vdisk/cmd/vdisk".
	Pkg string
	// Test builds the package's test binary (go test -c) instead of the
	// package itself.
	Test bool
}

// Config describes one guest run.
type Config struct {
	// Script is test.sh: a busybox sh script run as root in /share. It must
	// exit 0 on success and must not use the statuses 124 and 125.
	Script string
	// Binaries maps a file name in the share directory to what to build.
	Binaries map[string]Binary
	// Files maps a file name in the share directory to its contents.
	Files map[string][]byte
	// Timeout bounds the guest run (run.sh's timeout_s); zero means 300 s.
	// It is shortened to fit the test's deadline.
	Timeout time.Duration
	// NeedUblk skips (fails in CI) when the guest kernel has no ublk_drv.
	NeedUblk bool
	// Env adds run.sh knobs such as VMTEST_MEM or VMTEST_APPEND.
	Env []string
}

// Run builds c's binaries, runs c.Script in the guest and fails t unless it
// exits 0. It returns the share directory, where the files the script wrote
// under /share can be inspected. Run is safe to call from parallel tests and
// processes: guests run one at a time.
func Run(t testing.TB, c Config) string {
	t.Helper()
	env := newEnv(t)
	share := t.TempDir()
	for name, b := range c.Binaries {
		env.build(t, filepath.Join(share, name), b)
	}
	for name, data := range c.Files {
		if err := os.WriteFile(filepath.Join(share, name), data, 0o755); err != nil {
			t.Fatalf("vmtest: write %s: %v", name, err)
		}
	}
	if err := os.WriteFile(filepath.Join(share, "test.sh"), []byte(c.Script), 0o755); err != nil {
		t.Fatalf("vmtest: write test.sh: %v", err)
	}

	unlock := env.lock(t)
	defer unlock()
	env.prepare(t, c.NeedUblk)

	timeout := c.Timeout
	if timeout <= 0 {
		timeout = defaultTimeout
	}
	if dl, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if d, ok := dl.Deadline(); ok {
			left := time.Until(d) - deadlineReserve
			if left < 10*time.Second {
				t.Fatalf("vmtest: only %v left before the test deadline", time.Until(d).Round(time.Second))
			}
			timeout = min(timeout, left)
		}
	}
	var console bytes.Buffer
	start := time.Now()
	code, err := env.runGuest(context.Background(), share, timeout, c.Env, &console)
	for try := 1; err == nil && code == statusNoReport && !bytes.Contains(console.Bytes(), []byte(guestStarted)) && try < maxBoots; try++ {
		// The guest died before it ran test.sh: a boot failure of the
		// emulated kernel (seen: an int3 oops while patching kernel text
		// under TCG), not a result of the test. Boot again.
		t.Logf("vmtest: boot %d failed before test.sh started; booting again. Its console:\n%s", try, console.String())
		console.Reset()
		code, err = env.runGuest(context.Background(), share, timeout, c.Env, &console)
	}
	wall := time.Since(start).Round(100 * time.Millisecond)
	if err == nil {
		err = statusError(code)
	}
	if err != nil {
		if !testing.Verbose() {
			t.Logf("vmtest: guest console:\n%s", console.String())
		}
		t.Fatalf("vmtest: %v (after %v)", err, wall)
	}
	t.Logf("vmtest: test.sh passed in the guest, %v wall", wall)
	return share
}

// statusError maps run.sh's exit status to an error; 0 is nil.
func statusError(code int) error {
	switch code {
	case 0:
		return nil
	case statusTimeout:
		return errors.New("test.sh timed out in the guest (run.sh exit 124)")
	case statusNoReport:
		return errors.New("the guest never reported test.sh's status: qemu failed, kernel panic or oops (run.sh exit 125; see the console)")
	default:
		return fmt.Errorf("test.sh failed in the guest with exit status %d", code)
	}
}

// env is where the VM scripts and the cache are, and how to skip.
type env struct {
	ci    bool
	cache string
	vmDir string
	root  string // the module's root directory
}

func newEnv(t testing.TB) *env {
	t.Helper()
	e := &env{ci: os.Getenv("CI") == "true"}
	if os.Getenv("VDISK_SKIP_VM") == "1" {
		// The explicit opt-out (scripts/test.sh prints it in its summary).
		t.Skip("vmtest: VDISK_SKIP_VM=1: VM tests skipped on request")
	}
	if testing.Short() && !e.ci {
		t.Skip("vmtest: VM tests do not run in -short mode")
	}
	if os.Geteuid() != 0 {
		e.skip(t, "VM tests need root (run.sh and the guest's share run as root)")
	}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == os.DevNull {
		t.Fatalf("vmtest: cannot find the module root (go env GOMOD: %q, %v)", gomod, err)
	}
	e.root = filepath.Dir(gomod)
	e.vmDir = os.Getenv("VMTEST_DIR")
	if e.vmDir == "" {
		e.vmDir = filepath.Join(e.root, "..", "shared", "vm")
	}
	if _, err := os.Stat(filepath.Join(e.vmDir, "run.sh")); err != nil {
		e.skip(t, fmt.Sprintf("no VM scripts: %v (set VMTEST_DIR)", err))
	}
	e.cache = os.Getenv("VMTEST_CACHE")
	if e.cache == "" {
		e.cache = defaultCache
		if _, err := os.Stat(filepath.Join(e.cache, "stamp")); err != nil && !e.ci {
			e.skip(t, "VMTEST_CACHE is unset and "+defaultCache+" was never prepared (prepare.sh downloads about 130 MB)")
		}
	}
	return e
}

// skip skips t, or fails it in CI where VM tests must run.
func (e *env) skip(t testing.TB, why string) {
	t.Helper()
	if e.ci {
		t.Fatalf("vmtest: CI=true, cannot skip: %s", why)
	}
	t.Skipf("vmtest: %s", why)
}

// build compiles b statically into out.
func (e *env) build(t testing.TB, out string, b Binary) {
	t.Helper()
	args := []string{"build", "-o", out, b.Pkg}
	if b.Test {
		args = []string{"test", "-c", "-o", out, b.Pkg}
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = e.root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("vmtest: go %s: %v\n%s", strings.Join(args, " "), err, msg)
	}
}

// lock takes the machine-wide guest lock, waiting as long as it must.
func (e *env) lock(t testing.TB) func() {
	t.Helper()
	f, err := os.OpenFile(filepath.Clean(e.cache)+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatalf("vmtest: open the guest lock: %v", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		t.Fatalf("vmtest: lock %s: %v", f.Name(), err)
	}
	return func() { f.Close() } // closing drops the flock
}

// prepare runs prepare.sh (a stamp check when the cache is warm) and checks
// the kernel has ublk when needed.
func (e *env) prepare(t testing.TB, needUblk bool) {
	t.Helper()
	cmd := exec.Command(filepath.Join(e.vmDir, "prepare.sh"), e.cache)
	cmd.Env = append(os.Environ(), "VMTEST_EXTRA_MODULES="+extraModules)
	if e.ci && needUblk {
		cmd.Env = append(cmd.Env, "VMTEST_REQUIRE_UBLK=1")
	}
	if msg, err := cmd.CombinedOutput(); err != nil {
		e.skip(t, fmt.Sprintf("prepare.sh %s: %v\n%s", e.cache, err, msg))
	}
	if !needUblk {
		return
	}
	vmEnv, err := os.ReadFile(filepath.Join(e.cache, "vm.env"))
	if err != nil {
		t.Fatalf("vmtest: %v", err)
	}
	if !hasLine(vmEnv, "UBLK=1") {
		e.skip(t, "the guest kernel has no ublk_drv ("+filepath.Join(e.cache, "vm.env")+" says UBLK=0)")
	}
}

func hasLine(b []byte, line string) bool {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == line {
			return true
		}
	}
	return false
}

// runGuest runs run.sh and returns its exit status. The console goes to
// console, and to stdout as well under go test -v. Cancelling ctx sends
// SIGTERM, which run.sh traps to stop qemu and clean up.
func (e *env) runGuest(ctx context.Context, share string, timeout time.Duration, extraEnv []string, console *bytes.Buffer) (int, error) {
	secs := int((timeout + time.Second - 1) / time.Second)
	ctx, cancel := context.WithTimeout(ctx, timeout+cancelGrace)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(e.vmDir, "run.sh"), e.cache, share, fmt.Sprint(secs))
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = cancelGrace
	cmd.Env = append(os.Environ(), extraEnv...)
	var w io.Writer = console
	if testing.Verbose() {
		w = io.MultiWriter(console, os.Stdout)
	}
	cmd.Stdout, cmd.Stderr = w, w
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &ee) && ee.Exited():
		return ee.ExitCode(), nil
	default:
		return -1, fmt.Errorf("run.sh: %w", err)
	}
}
