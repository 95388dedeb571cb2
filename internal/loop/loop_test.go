package loop

import (
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name      string
		blockSize uint32
		wantErr   bool
	}{
		{name: "default", blockSize: 0},
		{name: "512", blockSize: 512},
		{name: "4096", blockSize: 4096},
		{name: "not a power of two", blockSize: 1000, wantErr: true},
		{name: "too large", blockSize: 8192, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := Options{BlockSize: tt.blockSize}
			if err := o.Validate(); (err != nil) != tt.wantErr {
				t.Fatalf("Validate() = %v, want error %v", err, tt.wantErr)
			}
		})
	}
}

func TestParseLoopName(t *testing.T) {
	tests := []struct {
		name string
		n    int
		ok   bool
	}{
		{"loop0", 0, true},
		{"loop17", 17, true},
		{"loop", 0, false},
		{"loop1p2", 0, false},
		{"loop01", 0, false},
		{"loop-1", 0, false},
		{"vda", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, ok := parseLoopName(tt.name)
			if n != tt.n || ok != tt.ok {
				t.Fatalf("parseLoopName(%q) = %d, %v; want %d, %v", tt.name, n, ok, tt.n, tt.ok)
			}
		})
	}
}

func TestEnsureNode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mknod needs root")
	}
	path := filepath.Join(t.TempDir(), "loop42")
	if err := ensureNode(path, unix.S_IFBLK, loopMajor, 42); err != nil {
		t.Fatalf("create: %v", err)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK || unix.Major(st.Rdev) != loopMajor || unix.Minor(st.Rdev) != 42 {
		t.Fatalf("node is mode %#o rdev %d:%d, want block 7:42", st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	if err := ensureNode(path, unix.S_IFBLK, loopMajor, 42); err != nil {
		t.Fatalf("existing node: %v", err)
	}
	if err := ensureNode(path, unix.S_IFBLK, loopMajor, 43); err == nil {
		t.Fatal("node with another number accepted")
	}
}

func TestAttachReadWriteDirect(t *testing.T) {
	requireLoop(t)
	const size = 64 << 20
	f := sparseFile(t, size)
	d := attach(t, f, Options{DirectIO: true})

	if d.Size != size || d.BlockSize != 512 || d.ReadOnly || d.AutoClear {
		t.Fatalf("attached device %+v: want size %d, block size 512, writable, no autoclear", d, size)
	}
	if want := supportsODirect(t, f.Name()); d.DirectIO != want {
		t.Fatalf("DirectIO = %v, but the file system allows O_DIRECT: %v", d.DirectIO, want)
	}
	if d.BackingFile != f.Name() {
		t.Fatalf("BackingFile = %q, want %q", d.BackingFile, f.Name())
	}
	got, err := Lookup(d.Path)
	if err != nil {
		t.Fatal(err)
	}
	if *got != *d {
		t.Fatalf("Lookup = %+v, Attach returned %+v", got, d)
	}

	dev, err := os.OpenFile(d.Path, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	buf := alignedBuf(1 << 20)
	rand.Read(buf)
	const off = 5<<20 + 4096
	if _, err := dev.WriteAt(buf, off); err != nil {
		t.Fatalf("O_DIRECT write through %s: %v", d.Path, err)
	}
	if err := dev.Sync(); err != nil {
		t.Fatal(err)
	}
	back := alignedBuf(len(buf))
	if _, err := dev.ReadAt(back, off); err != nil {
		t.Fatalf("O_DIRECT read through %s: %v", d.Path, err)
	}
	if !bytes.Equal(back, buf) {
		t.Fatal("read through the device differs from what was written")
	}
	inFile := make([]byte, len(buf))
	if _, err := f.ReadAt(inFile, off); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(inFile, buf) {
		t.Fatal("backing file does not hold what was written through the device")
	}
}

func TestAttachReadOnly(t *testing.T) {
	requireLoop(t)
	f := sparseFile(t, 8<<20)
	d := attach(t, f, Options{ReadOnly: true})
	if !d.ReadOnly {
		t.Fatalf("ReadOnly = false on %+v", d)
	}
	dev, err := os.OpenFile(d.Path, os.O_WRONLY, 0)
	if err == nil {
		_, err = dev.WriteAt([]byte("x"), 0)
		if err == nil {
			err = dev.Sync()
		}
		dev.Close()
	}
	if err == nil {
		t.Fatal("write to a read-only loop device succeeded")
	}
	t.Logf("write refused: %v", err)
	if n := allocated(t, f); n != 0 {
		t.Fatalf("backing file gained %d allocated bytes", n)
	}
}

// mbrWithOnePartition returns a sector-0 MBR with one Linux partition of
// sectors [start, start+count).
func mbrWithOnePartition(start, count uint32) []byte {
	mbr := make([]byte, 512)
	e := mbr[446:]
	e[4] = 0x83 // Linux
	binary.LittleEndian.PutUint32(e[8:], start)
	binary.LittleEndian.PutUint32(e[12:], count)
	mbr[510], mbr[511] = 0x55, 0xaa
	return mbr
}

func TestAttachPartScan(t *testing.T) {
	requireLoop(t)
	f := sparseFile(t, 16<<20)
	if _, err := f.WriteAt(mbrWithOnePartition(2048, 8192), 0); err != nil {
		t.Fatal(err)
	}
	d := attach(t, f, Options{PartScan: true})
	if !d.PartScan {
		t.Fatalf("PartScan = false on %+v", d)
	}
	if v, err := readSysfs(sysPath(d.Number) + "/loop/partscan"); err != nil || v != "1" {
		t.Fatalf("sysfs loop/partscan = %q, %v; want 1", v, err)
	}
	t.Run("partition appears", func(t *testing.T) {
		if !kernelHas(t, "CONFIG_MSDOS_PARTITION") {
			t.Skip("kernel built without CONFIG_MSDOS_PARTITION: it cannot read an MBR")
		}
		part := fmt.Sprintf("%s/loop%dp1", sysPath(d.Number), d.Number)
		size, err := readSysfs(part + "/size")
		if err != nil {
			t.Fatalf("partition 1 not found after the scan: %v", err)
		}
		if size != "8192" {
			t.Fatalf("partition 1 has %s sectors, want 8192", size)
		}
	})
}

// kernelHas reports whether the running kernel's config enables option
// (=y). Without /proc/config.gz it assumes yes.
func kernelHas(t *testing.T, option string) bool {
	t.Helper()
	f, err := os.Open("/proc/config.gz")
	if err != nil {
		return true
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Contains(cfg, []byte("\n"+option+"=y\n"))
}

func TestDiscardPunchesHoles(t *testing.T) {
	requireLoop(t)
	if _, err := exec.LookPath("blkdiscard"); err != nil {
		t.Skip("blkdiscard (util-linux) not installed")
	}
	f := sparseFile(t, 32<<20)
	d := attach(t, f, Options{DirectIO: true})
	dev, err := os.OpenFile(d.Path, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	buf := alignedBuf(16 << 20)
	rand.Read(buf)
	if _, err := dev.WriteAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if err := dev.Sync(); err != nil {
		t.Fatal(err)
	}
	if n := allocated(t, f); n < 16<<20 {
		t.Fatalf("after writing 16 MiB the file has only %d bytes allocated", n)
	}
	if out, err := exec.Command("blkdiscard", d.Path).CombinedOutput(); err != nil {
		t.Fatalf("blkdiscard %s: %v\n%s", d.Path, err, out)
	}
	if n := allocated(t, f); n > 1<<20 {
		t.Fatalf("after blkdiscard the file still has %d bytes allocated", n)
	}
	if _, err := dev.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, make([]byte, len(buf))) {
		t.Fatal("discarded range does not read as zeroes")
	}
}

func TestAttachConcurrent(t *testing.T) {
	requireLoop(t)
	const n = 4
	files := make([]*os.File, n)
	for i := range files {
		files[i] = sparseFile(t, 1<<20)
	}
	devs := make([]*Device, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { devs[i], errs[i] = Attach(files[i], Options{}) })
	}
	wg.Wait()
	seen := map[string]bool{}
	for i, d := range devs {
		if errs[i] != nil {
			t.Errorf("Attach %d: %v", i, errs[i])
			continue
		}
		t.Cleanup(func() { cleanupDetach(t, d) })
		if seen[d.Path] {
			t.Errorf("two files attached to %s", d.Path)
		}
		seen[d.Path] = true
		if d.BackingFile != files[i].Name() {
			t.Errorf("%s backs %q, want %q", d.Path, d.BackingFile, files[i].Name())
		}
	}
}

func TestLookupErrors(t *testing.T) {
	requireLoop(t)
	if _, err := Lookup("/dev/null"); !errors.Is(err, ErrNotLoop) {
		t.Errorf("Lookup(/dev/null) = %v, want ErrNotLoop", err)
	}
	if _, err := Lookup("/nonexistent/loop0"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Lookup of a missing path = %v, want ErrNotExist", err)
	}
	f := sparseFile(t, 1<<20)
	d := attach(t, f, Options{})
	if err := d.Detach(); err != nil {
		t.Fatal(err)
	}
	if _, err := Lookup(d.Path); !errors.Is(err, ErrNotAttached) {
		t.Errorf("Lookup of a detached device = %v, want ErrNotAttached", err)
	}
}

func TestFindByBackingFile(t *testing.T) {
	requireLoop(t)
	f := sparseFile(t, 1<<20)
	other := sparseFile(t, 1<<20)
	d1 := attach(t, f, Options{})
	d2 := attach(t, f, Options{ReadOnly: true})
	d3 := attach(t, other, Options{})

	link := filepath.Join(t.TempDir(), "link.img")
	if err := os.Symlink(f.Name(), link); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{f.Name(), link} {
		got, err := FindByBackingFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got[0].Path != min(d1.Path, d2.Path) && got[0].Number > got[1].Number {
			t.Fatalf("FindByBackingFile(%s) = %v, want %s and %s", name, got, d1, d2)
		}
		paths := map[string]bool{got[0].Path: true, got[1].Path: true}
		if !paths[d1.Path] || !paths[d2.Path] || paths[d3.Path] {
			t.Fatalf("FindByBackingFile(%s) = %v, want %s and %s", name, got, d1, d2)
		}
	}
	none, err := FindByBackingFile(filepath.Join(t.TempDir(), "none.img"))
	if err != nil || len(none) != 0 {
		t.Fatalf("FindByBackingFile of an unattached file = %v, %v; want none", none, err)
	}
}

func TestAttachBlockSize(t *testing.T) {
	requireLoop(t)
	f := sparseFile(t, 4<<20)
	d := attach(t, f, Options{BlockSize: 4096, DirectIO: true})
	if d.BlockSize != 4096 {
		t.Fatalf("BlockSize = %d, want 4096", d.BlockSize)
	}
	got, err := readSysfs(sysPath(d.Number) + "/queue/logical_block_size")
	if err != nil || got != "4096" {
		t.Fatalf("sysfs logical_block_size = %q, %v; want 4096", got, err)
	}
}

func TestAttachDirectIOFallback(t *testing.T) {
	requireLoop(t)
	// ramfs has no direct I/O: the kernel must refuse LO_FLAGS_DIRECT_IO
	// and Attach must fall back to buffered I/O and say so.
	dir := t.TempDir()
	if err := unix.Mount("ramfs", dir, "ramfs", 0, ""); err != nil {
		t.Skipf("cannot mount ramfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	path := filepath.Join(dir, "disk.img")
	if supportsODirect(t, dir) {
		t.Skip("this kernel's ramfs allows O_DIRECT")
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(1 << 20); err != nil {
		t.Fatal(err)
	}
	if supportsODirect(t, path) {
		t.Skip("this kernel's ramfs allows O_DIRECT")
	}
	d := attach(t, f, Options{DirectIO: true})
	if d.DirectIO {
		t.Fatalf("DirectIO = true on ramfs: %+v", d)
	}
	dev, err := os.OpenFile(d.Path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	if _, err := dev.WriteAt([]byte("buffered"), 512); err != nil {
		t.Fatal(err)
	}
	if err := dev.Sync(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 8)
	if _, err := f.ReadAt(got, 512); err != nil || string(got) != "buffered" {
		t.Fatalf("backing file holds %q, %v", got, err)
	}
}
