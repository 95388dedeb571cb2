package fuseexport

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"vdisk/internal/blockdev"
	"vdisk/internal/loop"
)

// requireTools skips the test unless every named program is installed.
func requireTools(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Skipf("%s not installed", n)
		}
	}
}

// run runs a command and fails the test with its output if it fails.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// attachLoop attaches a loop device to the export's file and detaches it
// when the test ends (before the export is unmounted: cleanups run last
// registered first).
func attachLoop(t *testing.T, e *Export, opt loop.Options) *loop.Device {
	t.Helper()
	mode := os.O_RDWR
	if opt.ReadOnly {
		mode = os.O_RDONLY
	}
	f, err := os.OpenFile(e.Path(), mode, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close() // the loop device keeps its own reference
	d, err := loop.Attach(f, opt)
	if err != nil {
		t.Fatalf("attach a loop device to %s: %v", e.Path(), err)
	}
	t.Cleanup(func() {
		err := d.Detach()
		if errors.Is(err, loop.ErrBusy) {
			err = d.DetachLazy()
		}
		if err != nil && !errors.Is(err, loop.ErrNotAttached) {
			t.Errorf("cleanup: %v", err)
		}
	})
	return d
}

// mountFS mounts dev on a fresh directory and unmounts it when the test
// ends unless the test did already.
func mountFS(t *testing.T, dev string, opts ...string) (dir string, umount func()) {
	t.Helper()
	dir = t.TempDir()
	args := append(opts, dev, dir)
	run(t, "mount", args...)
	mounted := true
	umount = func() {
		if mounted {
			run(t, "umount", dir)
			mounted = false
		}
	}
	t.Cleanup(func() {
		if mounted && exec.Command("umount", dir).Run() != nil {
			exec.Command("umount", "-l", dir).Run()
		}
	})
	return dir, umount
}

func TestLoopOnFUSEFilesystem(t *testing.T) {
	requireFUSE(t)
	requireTools(t, "mkfs.ext4", "e2fsck", "mount", "umount")
	const size = 64 << 20
	dev := newCounting(size)
	e := mount(t, dev, Options{})
	ld := attachLoop(t, e, loop.Options{DirectIO: true})
	if !ld.DirectIO {
		t.Errorf("loop device over the FUSE file runs without direct I/O: %+v", ld)
	}
	if ld.Size != size {
		t.Fatalf("loop device has %d bytes, want %d", ld.Size, size)
	}

	run(t, "mkfs.ext4", "-q", "-F", ld.Path) // discards the whole device first
	if dev.trims.Load() == 0 {
		t.Error("mkfs.ext4's discard did not reach the device as Trim")
	}
	mnt, umount := mountFS(t, ld.Path)
	files := map[string][]byte{}
	for i := range 8 {
		b := make([]byte, (i+1)*300<<10+i)
		rand.Read(b)
		name := fmt.Sprintf("f%d", i)
		files[name] = b
		if err := os.WriteFile(filepath.Join(mnt, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	run(t, "sync")
	flushes := dev.flushes.Load()
	umount()
	if err := ld.Detach(); err != nil {
		t.Fatalf("detach: %v", err)
	}
	if dev.flushes.Load() == flushes {
		t.Error("umount and detach did not flush the device")
	}
	if err := e.Close(); err != nil {
		t.Fatalf("unmount the export: %v", err)
	}
	select {
	case <-e.Done():
	default:
		t.Fatal("Close returned while the export was still serving")
	}

	// A fresh export of the same device, read-only: the file system is
	// clean and holds the files.
	e2 := mount(t, dev, Options{ReadOnly: true})
	ld2 := attachLoop(t, e2, loop.Options{ReadOnly: true, DirectIO: true})
	run(t, "e2fsck", "-fn", ld2.Path)
	mnt2, umount2 := mountFS(t, ld2.Path, "-o", "ro")
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(mnt2, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s differs after remount", name)
		}
	}
	umount2()
}

func TestCloseBusy(t *testing.T) {
	requireFUSE(t)
	e := mount(t, blockdev.NewMem(1<<20), Options{})
	ld := attachLoop(t, e, loop.Options{})
	found, err := loop.FindByBackingFile(e.Path())
	if err != nil || len(found) != 1 || found[0].Path != ld.Path {
		t.Fatalf("FindByBackingFile(%s) = %v, %v; want [%s]", e.Path(), found, err, ld.Path)
	}
	if err := e.Close(); !errors.Is(err, ErrBusy) {
		t.Fatalf("Close with a loop device attached = %v, want ErrBusy", err)
	}
	if _, err := os.Stat(e.Path()); err != nil {
		t.Fatalf("export gone after a refused Close: %v", err)
	}
	if err := ld.Detach(); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatalf("Close after detach: %v", err)
	}
	if err := e.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Close = %v, want ErrClosed", err)
	}
}

func TestCloseForceKeepsServing(t *testing.T) {
	requireFUSE(t)
	dev := blockdev.NewMem(1 << 20)
	e := mount(t, dev, Options{})
	ld := attachLoop(t, e, loop.Options{})
	if err := e.CloseForce(); err != nil {
		t.Fatalf("CloseForce: %v", err)
	}
	if _, err := os.Stat(e.Path()); err == nil {
		t.Fatal("file still visible after a lazy unmount")
	}
	select {
	case <-e.Done():
		t.Fatal("export stopped serving while a loop device still uses it")
	default:
	}
	// The loop device still reaches the device.
	f, err := os.OpenFile(ld.Path, os.O_RDWR|os.O_SYNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("after lazy unmount"), 4096); err != nil {
		t.Fatal(err)
	}
	f.Close()
	got := make([]byte, 18)
	if _, err := dev.ReadAt(got, 4096); err != nil || string(got) != "after lazy unmount" {
		t.Fatalf("device holds %q, %v", got, err)
	}
	if err := ld.Detach(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-e.Done():
	case <-time.After(serveWait):
		t.Fatalf("export still serving %v after its last user left", serveWait)
	}
}

// TestResizeUnderLoop grows the device under a loop device on the export
// while it is attached: after Resize and SetCapacity the loop device has
// the new size and its new end reads and writes the device.
func TestResizeUnderLoop(t *testing.T) {
	requireFUSE(t)
	p := filepath.Join(t.TempDir(), "grow.img")
	dev, err := blockdev.OpenFile(p, blockdev.FileOptions{Create: true, Size: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	e := mount(t, dev, Options{})
	ld := attachLoop(t, e, loop.Options{})
	if err := dev.Resize(20 << 20); err != nil {
		t.Fatal(err)
	}
	if err := e.Resize(20 << 20); err != nil {
		t.Fatalf("Export.Resize: %v", err)
	}
	n, err := ld.SetCapacity()
	if err != nil || n != 20<<20 {
		t.Fatalf("loop SetCapacity: %d, %v; want %d", n, err, 20<<20)
	}
	f, err := os.OpenFile(ld.Path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tail := bytes.Repeat([]byte("grown"), 4096)[:16384]
	if _, err := f.WriteAt(tail, 20<<20-16384); err != nil {
		t.Fatalf("write at the new end of %s: %v", ld.Path, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(tail))
	if _, err := dev.ReadAt(got, 20<<20-16384); err != nil || !bytes.Equal(got, tail) {
		t.Fatalf("the device does not hold the write at its new end (%v)", err)
	}
}
