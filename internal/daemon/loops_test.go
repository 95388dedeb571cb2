package daemon

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"strings"

	"golang.org/x/sys/unix"
	"os"
	"path/filepath"
	"testing"
	"time"

	"vdisk/internal/api"
	"vdisk/internal/blockdev"
	"vdisk/internal/fuseexport"
	"vdisk/internal/loop"
)

// brokenLoopEnv, when set, makes TestHelperBrokenLoop run: the directory
// to mount a FUSE export in.
const brokenLoopEnv = "VDISK_TEST_BROKEN_LOOP_DIR"

// brokenWait bounds the wait for the kernel to drop the dead FUSE file's
// cached attributes.
const brokenWait = 30 * time.Second

// brokenLoop attaches a loop device to a FUSE file that a helper process
// serves, and kills the helper with SIGKILL: the device stays, over a FUSE
// file whose server is gone, and reading its state fails (ENOTCONN), as
// after a crash of a daemon that served it. (The helper must not hold the
// FUSE file open itself: its exit would wait on its own FUSE server.)
func brokenLoop(t *testing.T) *loop.Device {
	t.Helper()
	if err := checkFUSE(); err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperBrokenLoop$")
	cmd.Env = append(os.Environ(), brokenLoopEnv+"="+dir)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	kill := func() { cmd.Process.Kill(); cmd.Wait() }
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		kill()
		t.Fatalf("helper said %q, %v", line, err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	f, err := os.OpenFile(filepath.Join(dir, fuseFileName), os.O_RDWR, 0)
	if err != nil {
		kill()
		t.Fatal(err)
	}
	l, err := loop.Attach(f, loop.Options{})
	f.Close()
	if err != nil {
		kill()
		t.Fatal(err)
	}
	t.Cleanup(func() { l.DetachLazy() })
	kill()
	// The kernel answers from the attributes it cached until they expire.
	deadline := time.Now().Add(brokenWait)
	for {
		if _, err := loop.Lookup(l.Path); err != nil {
			t.Logf("%s over a dead FUSE file: %v", l.Path, err)
			return l
		}
		if time.Now().After(deadline) {
			t.Skipf("this kernel still reports the state of a loop device over a FUSE file dead for %v", brokenWait)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestHelperBrokenLoop is brokenLoop's helper process: it serves a FUSE
// export, says so, and waits to be killed.
func TestHelperBrokenLoop(t *testing.T) {
	dir := os.Getenv(brokenLoopEnv)
	if dir == "" {
		t.Skip("helper process of TestFindLoopsSkipsBrokenDevice")
	}
	if _, err := fuseexport.Mount(dir, blockdev.NewMem(1<<20), fuseexport.Options{Name: fuseFileName}); err != nil {
		t.Fatal(err)
	}
	fmt.Println("ready")
	select {} // killed by brokenLoop
}

// TestFindLoopsSkipsBrokenDevice: a loop device over a dead FUSE file
// elsewhere on the host neither stops a restart from adopting a disk's loop
// device nor hides a loop device attached outside vdisk.
func TestFindLoopsSkipsBrokenDevice(t *testing.T) {
	needKernel(t)
	broken := brokenLoop(t)
	probe := filepath.Join(t.TempDir(), "probe.img")
	if err := os.WriteFile(probe, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loop.FindByBackingFile(probe); err == nil {
		t.Skipf("loop.FindByBackingFile copes with %s by itself", broken.Path)
	}
	ctx := context.Background()
	first := startDaemon(t, "")
	file := filepath.Join(first.dir, "a.img")
	d, err := first.c.Open(ctx, api.OpenRequest{File: file, Create: true, Size: 4 << 20, Via: api.ViaLoop})
	if err != nil {
		t.Fatal(err)
	}
	second := startDaemon(t, first.stateDir)
	got, err := second.c.Disk(ctx, d.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != api.StateOpen || got.Device != d.Device {
		t.Fatalf("restored %+v next to the broken %s, want the adopted %s", got, broken.Path, d.Device)
	}
	if _, err := second.c.CloseDisk(ctx, d.ID, false); err != nil {
		t.Fatal(err)
	}
	first.stop()

	// A loop device attached outside vdisk is still seen.
	other := filepath.Join(second.dir, "b.img")
	if err := os.WriteFile(other, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(other, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	l, err := loop.Attach(f, loop.Options{})
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Detach()
	_, err = second.c.Open(ctx, api.OpenRequest{File: other})
	wantCode(t, err, api.CodeBusy)
}
