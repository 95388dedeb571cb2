package loop

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// detachWait bounds how long a test waits for the kernel to finish a
// detach that runs on last close.
const detachWait = 10 * time.Second

// requireLoop skips the test unless it runs as root on a kernel with loop
// devices.
func requireLoop(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loop devices need root")
	}
	if _, err := os.Stat("/sys/class/misc/loop-control"); err != nil {
		t.Skipf("kernel has no loop driver: %v", err)
	}
}

// sparseFile creates a sparse file of size bytes and returns it open
// read-write; the test closes it.
func sparseFile(t *testing.T, size int64) *os.File {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(t.TempDir(), "disk.img"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return f
}

// attach attaches f and detaches it again when the test ends, whatever
// happened in between.
func attach(t *testing.T, f *os.File, opt Options) *Device {
	t.Helper()
	d, err := Attach(f, opt)
	if err != nil {
		t.Fatalf("Attach(%s, %+v): %v", f.Name(), opt, err)
	}
	t.Cleanup(func() { cleanupDetach(t, d) })
	return d
}

// cleanupDetach detaches d if it is still attached, lazily if it must.
func cleanupDetach(t *testing.T, d *Device) {
	err := d.Detach()
	if errors.Is(err, ErrNotAttached) || err == nil {
		return
	}
	t.Logf("cleanup: %v; detaching lazily", err)
	if err := d.DetachLazy(); err != nil && !errors.Is(err, ErrNotAttached) {
		t.Errorf("cleanup: %v", err)
	}
}

// waitDetached waits until path has no backing file.
func waitDetached(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(detachWait)
	for {
		_, err := Lookup(path)
		if errors.Is(err, ErrNotAttached) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still attached after %v (Lookup: %v)", path, detachWait, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// alignedBuf returns n bytes aligned for O_DIRECT.
func alignedBuf(n int) []byte {
	const align = 4096
	b := make([]byte, n+align)
	off := align - int(uintptr(unsafe.Pointer(&b[0]))%align)
	if off == align {
		off = 0
	}
	return b[off : off+n : off+n]
}

// allocated returns the bytes f occupies on disk.
func allocated(t *testing.T, f *os.File) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// supportsODirect reports whether the file system under dir allows O_DIRECT.
func supportsODirect(t *testing.T, path string) bool {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		return false
	}
	f.Close()
	return true
}
