package fuseexport

import (
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

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
		"--output-format=terse")
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
