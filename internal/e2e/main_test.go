package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"vdisk/internal/storage/objstore/s3/s3test"

	"vdisk/internal/client"
)

// bin is the vdisk binary TestMain built; skipReason is set when the
// machine cannot run these tests.
var (
	bin        string
	skipReason string
)

// Bounds of the waits in these tests.
const (
	cmdTimeout  = 5 * time.Minute
	stopTimeout = 30 * time.Second
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	switch {
	case os.Geteuid() != 0:
		skipReason = "needs root (loop devices, FUSE, mount)"
	case !exists("/dev/loop-control"):
		skipReason = "no loop driver (/dev/loop-control)"
	}
	if skipReason != "" {
		return m.Run()
	}
	tmp, err := os.MkdirTemp("", "vdisk-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	// Readable by everyone: the not-root test runs the binary as nobody.
	if err := os.Chmod(tmp, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	bin = filepath.Join(tmp, "vdisk")
	root, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		fmt.Fprintln(os.Stderr, "go env GOMOD:", err)
		return 1
	}
	build := exec.Command("go", "build", "-o", bin, "./cmd/vdisk")
	build.Dir = filepath.Dir(strings.TrimSpace(string(root)))
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build vdisk:", err)
		return 1
	}
	return s3test.Main(m) // runs the tests, then stops the S3 server if one started
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// env is one test's vdisk installation: its own socket and state.
type env struct {
	t        *testing.T
	base     string
	socket   string
	stateDir string
	dir      string // for images and mount points
}

// newEnv prepares a fresh socket and state directory. Cleanup closes every
// disk (forced), stops the daemon and kills it if it does not stop.
func newEnv(t *testing.T) *env {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
	base, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, base: base, socket: filepath.Join(base, "run", "vdisk.sock"), stateDir: filepath.Join(base, "state"), dir: filepath.Join(base, "img")}
	if err := os.Mkdir(e.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.cleanup)
	return e
}

// cleanup closes everything and stops the daemon, if one runs, and then
// any daemon of this test that still lives (one that did not answer in
// time: a test must not leave daemons behind).
func (e *env) cleanup() {
	defer e.killStrays()
	pid := e.daemonPID()
	if pid == 0 {
		return
	}
	if _, errs, code := e.run("close", "--all", "--force"); code != 0 {
		e.t.Logf("cleanup: close --all: %s", errs)
	}
	e.stopDaemon(pid, syscall.SIGTERM)
	if b, err := os.ReadFile(filepath.Join(e.base, "run", "vdisk-daemon.log")); err == nil && e.t.Failed() {
		e.t.Logf("daemon log:\n%s", b)
	}
}

// killStrays kills every process still running a daemon on this test's
// socket, found by its command line.
func (e *env) killStrays() {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil || !bytes.Contains(b, []byte("\x00daemon\x00")) {
			continue
		}
		if !bytes.Contains(b, []byte(e.socket)) {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil || pid == os.Getpid() {
			continue
		}
		e.t.Logf("cleanup: killing daemon %d left running", pid)
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// daemonPID returns the pid of the daemon answering on the socket, or 0.
func (e *env) daemonPID() int {
	c := client.New(e.socket)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	v, err := c.Version(ctx)
	if err != nil {
		return 0
	}
	return v.PID
}

// stopDaemon sends sig to the daemon and waits until it is gone, killing it
// after stopTimeout.
func (e *env) stopDaemon(pid int, sig syscall.Signal) {
	e.t.Helper()
	if err := syscall.Kill(pid, sig); err != nil {
		e.t.Logf("signal daemon %d: %v", pid, err)
		return
	}
	deadline := time.Now().Add(stopTimeout)
	for syscall.Kill(pid, 0) == nil {
		if isZombieOrGone(pid) {
			return
		}
		if time.Now().After(deadline) {
			e.t.Errorf("daemon %d did not stop after %v; killing it", pid, stopTimeout)
			syscall.Kill(pid, syscall.SIGKILL)
			deadline = time.Now().Add(stopTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// isZombieOrGone reports whether pid has exited (a zombie waiting for init
// counts: the daemon is detached and not our child).
func isZombieOrGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && i+2 < len(b) && b[i+2] == 'Z'
}

// run runs vdisk with args in this env.
func (e *env) run(args ...string) (stdout, stderr string, code int) {
	e.t.Helper()
	return e.runWith(nil, bin, args...)
}

// runWith runs name with args in this env (VDISK_SOCKET, VDISK_STATE_DIR
// set), after mod has adjusted the command, and returns its output and
// exit status.
func (e *env) runWith(mod func(*exec.Cmd), name string, args ...string) (stdout, stderr string, code int) {
	e.t.Helper()
	return e.runFor(cmdTimeout, nil, mod, name, args...)
}

// runFor is runWith bounded by timeout (a command still running then has
// hung: it is killed and the test fails). With rss set it also measures
// the command's peak resident memory in bytes, through GNU time (the
// kernel's maxrss of a child Go starts counts the test binary it was
// cloned from).
func (e *env) runFor(timeout time.Duration, rss *int64, mod func(*exec.Cmd), name string, args ...string) (stdout, stderr string, code int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	rssFile := ""
	if rss != nil {
		rssFile = filepath.Join(e.t.TempDir(), "rss")
		args = append([]string{"-q", "-f", "%M", "-o", rssFile, name}, args...)
		name = "/usr/bin/time"
	}
	cmd := exec.CommandContext(ctx, name, args...)
	var o, er bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &er
	cmd.Env = append(os.Environ(), "VDISK_SOCKET="+e.socket, "VDISK_STATE_DIR="+e.stateDir)
	cmd.WaitDelay = time.Second
	if mod != nil {
		mod(cmd)
	}
	err := cmd.Run()
	if ctx.Err() != nil {
		e.t.Errorf("%v: still running after %s (hung)", args, timeout)
	}
	if b, rerr := os.ReadFile(rssFile); rss != nil && rerr == nil {
		kib, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		*rss = kib << 10
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return o.String(), er.String(), ee.ExitCode()
	}
	if err != nil {
		// Errorf, not Fatalf: this may run in a subtest of e.t.
		e.t.Errorf("%s %v: %v", name, args, err)
		return o.String(), er.String(), -1
	}
	return o.String(), er.String(), 0
}

// must runs vdisk with args and fails the test unless it succeeds.
func (e *env) must(args ...string) string {
	e.t.Helper()
	out, errs, code := e.run(args...)
	if code != 0 {
		e.t.Fatalf("vdisk %s: exit %d: %s", strings.Join(args, " "), code, errs)
	}
	return out
}

// open runs vdisk open and returns the device and id.
func (e *env) open(args ...string) (dev, id string) {
	e.t.Helper()
	f := strings.Fields(e.must(append([]string{"open"}, args...)...))
	if len(f) != 2 {
		e.t.Fatalf("vdisk open printed %q", f)
	}
	return f[0], f[1]
}

// sh runs a tool and fails the test unless it succeeds.
func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// mount mounts dev on a new directory and unmounts it at cleanup if the
// test did not.
func mount(t *testing.T, dev, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	sh(t, "mount", dev, dir)
	t.Cleanup(func() {
		if isMounted(dir) {
			exec.Command("umount", "-l", dir).Run()
		}
	})
}

// isMounted reports whether dir is a mount point.
func isMounted(dir string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}
