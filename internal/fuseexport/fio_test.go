package fuseexport

import (
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"vdisk/internal/blockdev"
	"vdisk/internal/loop"
)

// openFileDevice creates a sparse raw image of size bytes in the test's
// temporary directory and opens it as a blockdev.File.
func openFileDevice(t *testing.T, size int64) *blockdev.File {
	t.Helper()
	dev, err := blockdev.OpenFile(filepath.Join(t.TempDir(), "disk.raw"), blockdev.FileOptions{Create: true, Size: size})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	return dev
}

func TestFioVerifyLoopOnFUSE(t *testing.T) {
	requireFUSE(t)
	requireTools(t, "fio")
	dev := openFileDevice(t, 16<<20)
	e := mount(t, dev, Options{})
	ld := attachLoop(t, e, loop.Options{DirectIO: true})
	cmd := exec.Command("fio", "--name=verify", "--filename="+ld.Path,
		"--rw=randwrite", "--bs=4k", "--iodepth=16", "--ioengine=libaio", "--direct=1",
		"--size=16M", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
		"--verify_state_save=0", "--output-format=terse")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("fio verify on %s over %s: %v\n%s", ld.Path, e.Path(), err, out)
	}
	// Terse format: field 4 is the job's error, field 5 the KiB read (the
	// verification pass reads back everything written).
	fields := strings.Split(strings.TrimSpace(string(out)), ";")
	if len(fields) < 6 || fields[4] != "0" {
		t.Fatalf("fio reported an error:\n%s", out)
	}
	if readKiB, err := strconv.Atoi(fields[5]); err != nil || readKiB < 16<<10 {
		t.Fatalf("fio verified %s KiB, want all 16 MiB:\n%s", fields[5], out)
	}
}

func TestDiscardReachesImageFile(t *testing.T) {
	requireFUSE(t)
	requireTools(t, "blkdiscard")
	const size = 32 << 20
	dev := openFileDevice(t, size)
	e := mount(t, dev, Options{})
	ld := attachLoop(t, e, loop.Options{DirectIO: true})
	f, err := os.OpenFile(ld.Path, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 16<<20+4096)
	pad := 4096 - int(uintptr(unsafe.Pointer(&buf[0]))%4096)
	buf = buf[pad%4096:][:16<<20]
	rand.Read(buf)
	if _, err := f.WriteAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if n := allocatedBytes(t, dev.Path()); n < 16<<20 {
		t.Fatalf("image file has %d bytes allocated after a 16 MiB write", n)
	}
	run(t, "blkdiscard", ld.Path)
	if n := allocatedBytes(t, dev.Path()); n > 1<<20 {
		t.Fatalf("image file still has %d bytes allocated after blkdiscard", n)
	}
	if _, err := f.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if !blockdev.IsZero(buf) {
		t.Fatal("discarded range does not read as zeroes through the loop device")
	}
}

// allocatedBytes returns the bytes the file at path occupies on disk.
func allocatedBytes(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}
