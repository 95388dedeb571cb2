package fuseexport

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"vdisk/internal/blockdev"
	"vdisk/internal/loop"
)

// countedFile is a blockdev.File that counts the calls that reach it.
type countedFile struct {
	*blockdev.File
	reads, writes, flushes, trims atomic.Int64
}

func (c *countedFile) ReadAt(p []byte, off int64) (int, error) {
	c.reads.Add(1)
	return c.File.ReadAt(p, off)
}

func (c *countedFile) WriteAt(p []byte, off int64) (int, error) {
	c.writes.Add(1)
	return c.File.WriteAt(p, off)
}

func (c *countedFile) Flush() error {
	c.flushes.Add(1)
	return c.File.Flush()
}

func (c *countedFile) Trim(off, n int64) error {
	c.trims.Add(1)
	return c.File.Trim(off, n)
}

// kernelHasPassthrough reports whether the running kernel is 6.9 or
// later, the first with FUSE passthrough.
func kernelHasPassthrough(t *testing.T) bool {
	t.Helper()
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	rel := unix.ByteSliceToString(u.Release[:])
	parts := strings.SplitN(rel, ".", 3)
	if len(parts) < 2 {
		t.Fatalf("kernel release %q", rel)
	}
	major, _ := strconv.Atoi(parts[0])
	minor, _ := strconv.Atoi(strings.TrimFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	return major > 6 || major == 6 && minor >= 9
}

// mountPassthrough exports dev with its file passed through, and skips the
// test on a kernel older than FUSE passthrough.
func mountPassthrough(t *testing.T, dev *countedFile, opt Options) *Export {
	t.Helper()
	if !kernelHasPassthrough(t) {
		t.Skip("FUSE passthrough needs Linux 6.9")
	}
	opt.Passthrough = dev.OS()
	e := mount(t, dev, opt)
	if !e.Passthrough() {
		t.Fatal("the kernel refused the image file as a passthrough backing file")
	}
	return e
}

// alignedBuf returns n bytes aligned for O_DIRECT.
func alignedBuf(n int) []byte {
	buf := make([]byte, n+4096)
	pad := (4096 - int(uintptr(unsafe.Pointer(&buf[0]))%4096)) % 4096
	return buf[pad:][:n]
}

func TestPassthroughLoopFio(t *testing.T) {
	requireFUSE(t)
	requireTools(t, "fio", "blkdiscard")
	const size = 32 << 20
	dev := &countedFile{File: openFileDevice(t, size)}
	e := mountPassthrough(t, dev, Options{})
	ld := attachLoop(t, e, loop.Options{DirectIO: true})
	if !ld.DirectIO {
		t.Errorf("loop device over the passed-through file runs without direct I/O: %+v", ld)
	}
	out, err := exec.Command("fio", "--name=verify", "--filename="+ld.Path,
		"--rw=randwrite", "--bs=4k", "--iodepth=16", "--ioengine=libaio", "--direct=1",
		"--size=16M", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
		"--verify_state_save=0", "--output-format=terse").CombinedOutput()
	if err != nil {
		t.Fatalf("fio verify on %s over %s: %v\n%s", ld.Path, e.Path(), err, out)
	}
	if fields := strings.Split(strings.TrimSpace(string(out)), ";"); len(fields) < 6 || fields[4] != "0" {
		t.Fatalf("fio reported an error:\n%s", out)
	}
	if r, w := dev.reads.Load(), dev.writes.Load(); r != 0 || w != 0 {
		t.Errorf("the device served %d reads and %d writes: they were not passed through", r, w)
	}

	// What the loop device wrote is in the image file, and an fsync of
	// the loop device still reaches the Device.
	f, err := os.OpenFile(ld.Path, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := alignedBuf(1 << 20)
	rand.Read(want)
	if _, err := f.WriteAt(want, 8<<20); err != nil {
		t.Fatal(err)
	}
	flushes := dev.flushes.Load()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if dev.flushes.Load() == flushes {
		t.Error("fsync of the loop device did not reach the Device as Flush")
	}
	got := make([]byte, len(want))
	if _, err := dev.OS().ReadAt(got, 8<<20); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the image file does not hold what was written through the loop device")
	}

	// A discard reaches the Device as Trim and punches the image file.
	run(t, "blkdiscard", ld.Path)
	if dev.trims.Load() == 0 {
		t.Error("blkdiscard did not reach the Device as Trim")
	}
	if n := allocatedBytes(t, dev.Path()); n > 1<<20 {
		t.Errorf("image file still has %d bytes allocated after blkdiscard", n)
	}
	if _, err := f.ReadAt(want, 8<<20); err != nil {
		t.Fatal(err)
	}
	if !blockdev.IsZero(want) {
		t.Fatal("discarded range does not read as zeroes through the loop device")
	}
}

func TestPassthroughReadOnly(t *testing.T) {
	requireFUSE(t)
	const size = 1 << 20
	img := openFileDevice(t, size)
	if _, err := img.WriteAt(bytes.Repeat([]byte{7}, size), 0); err != nil {
		t.Fatal(err)
	}
	ro, err := os.Open(img.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	dev := &countedFile{File: img}
	e := mountPassthrough(t, dev, Options{ReadOnly: true, Passthrough: ro})
	if _, err := os.OpenFile(e.Path(), os.O_RDWR, 0); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("open for writing = %v, want EROFS", err)
	}
	got, err := os.ReadFile(e.Path())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, bytes.Repeat([]byte{7}, size)) {
		t.Fatal("read through the passed-through file differs from the image")
	}
	if n := dev.reads.Load(); n != 0 {
		t.Errorf("the device served %d reads: they were not passed through", n)
	}
}

func TestPassthroughRefused(t *testing.T) {
	requireFUSE(t)
	const size = 1 << 20
	img := openFileDevice(t, size)
	short, err := os.Create(img.Path() + ".short")
	if err != nil {
		t.Fatal(err)
	}
	defer short.Close()
	ro, err := os.Open(img.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	for name, b := range map[string]*os.File{
		"other size":               short,
		"read-only for a writable": ro,
		"a directory, not a file":  mustOpen(t, t.TempDir()),
	} {
		t.Run(name, func(t *testing.T) {
			dev := &countedFile{File: img}
			e := mount(t, dev, Options{Passthrough: b})
			if e.Passthrough() {
				t.Fatal("Passthrough() = true")
			}
			// Everything goes to the device, as without the option.
			f, err := os.OpenFile(e.Path(), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt([]byte("x"), 0); err != nil {
				t.Fatal(err)
			}
			if _, err := f.ReadAt(make([]byte, 1), 0); err != nil {
				t.Fatal(err)
			}
			if dev.reads.Load() == 0 || dev.writes.Load() == 0 {
				t.Fatalf("the device served %d reads and %d writes, want both", dev.reads.Load(), dev.writes.Load())
			}
		})
	}
}

// mustOpen opens path read-only and closes it when the test ends.
func mustOpen(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}
