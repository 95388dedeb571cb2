package fuseexport

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"vdisk/internal/blockdev"
)

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    string
		wantErr bool
	}{
		{name: "default", in: "", want: "disk"},
		{name: "custom", in: "vol.img", want: "vol.img"},
		{name: "slash", in: "a/b", wantErr: true},
		{name: "dot", in: ".", wantErr: true},
		{name: "dotdot", in: "..", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := Options{Name: tt.in}
			err := o.Validate()
			if (err != nil) != tt.wantErr {
				t.Fatalf("Validate() = %v, want error %v", err, tt.wantErr)
			}
			if err == nil && (o.Name != tt.want || o.Logger == nil) {
				t.Fatalf("Validate() left %+v, want name %q and a logger", o, tt.want)
			}
		})
	}
}

func TestMountErrors(t *testing.T) {
	requireFUSE(t)
	dev := blockdev.NewMem(1 << 20)
	if _, err := Mount(filepath.Join(t.TempDir(), "missing"), dev, Options{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Mount on a missing directory = %v, want ErrNotExist", err)
	}
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Mount(file, dev, Options{}); err == nil {
		t.Error("Mount on a regular file succeeded")
	}
}

func TestReadWrite(t *testing.T) {
	requireFUSE(t)
	const size = 8 << 20
	dev := blockdev.NewMem(size)
	e := mount(t, dev, Options{Name: "vol"})
	if e.Path() != filepath.Join(e.Dir(), "vol") {
		t.Fatalf("Path() = %q", e.Path())
	}
	st, err := os.Stat(e.Path())
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != size || !st.Mode().IsRegular() || st.Mode().Perm() != 0o600 {
		t.Fatalf("file is %v, %d bytes; want a regular 0600 file of %d", st.Mode(), st.Size(), size)
	}
	f, err := os.OpenFile(e.Path(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	buf := make([]byte, 3<<20+17)
	rand.Read(buf)
	const off = 1<<20 - 5
	if n, err := f.WriteAt(buf, off); err != nil || n != len(buf) {
		t.Fatalf("pwrite = %d, %v", n, err)
	}
	got := make([]byte, len(buf))
	if _, err := dev.ReadAt(got, off); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, buf) {
		t.Fatal("device does not hold what was written through the file")
	}
	clear(got)
	if n, err := f.ReadAt(got, off); err != nil || n != len(got) {
		t.Fatalf("pread = %d, %v", n, err)
	}
	if !bytes.Equal(got, buf) {
		t.Fatal("pread differs from what was written")
	}

	// At the end: a read stops there, a write past it fails.
	tail := make([]byte, 100)
	if n, err := f.ReadAt(tail, size-10); n != 10 || err != io.EOF {
		t.Fatalf("pread across the end = %d, %v; want 10, EOF", n, err)
	}
	if _, err := f.WriteAt([]byte("x"), size); !errors.Is(err, syscall.ENOSPC) && !errors.Is(err, syscall.EFBIG) {
		t.Fatalf("pwrite at the end = %v, want ENOSPC", err)
	}
	if err := f.Truncate(size / 2); err == nil {
		t.Fatal("truncate of the device file succeeded")
	}
}

func TestParallelWrites(t *testing.T) {
	requireFUSE(t)
	const (
		workers = 8
		chunk   = 256 << 10
	)
	dev := blockdev.NewMem(workers * chunk)
	e := mount(t, dev, Options{})
	f, err := os.OpenFile(e.Path(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := make([]byte, workers*chunk)
	rand.Read(want)
	var wg sync.WaitGroup
	errs := make([]error, workers)
	for i := range workers {
		wg.Go(func() {
			_, errs[i] = f.WriteAt(want[i*chunk:(i+1)*chunk], int64(i*chunk))
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	if _, err := dev.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("device content differs after parallel writes")
	}
}

func TestReadOnly(t *testing.T) {
	requireFUSE(t)
	tests := []struct {
		name string
		dev  func(blockdev.Device) blockdev.Device
		opt  Options
	}{
		{name: "export option", dev: func(d blockdev.Device) blockdev.Device { return d }, opt: Options{ReadOnly: true}},
		{name: "read-only device", dev: blockdev.ReadOnly},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mem := blockdev.NewMem(1 << 20)
			if _, err := mem.WriteAt([]byte("hello"), 0); err != nil {
				t.Fatal(err)
			}
			e := mount(t, tt.dev(mem), tt.opt)
			st, err := os.Stat(e.Path())
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o400 {
				t.Errorf("read-only file has mode %v, want 0400", st.Mode())
			}
			if _, err := os.OpenFile(e.Path(), os.O_RDWR, 0); !errors.Is(err, syscall.EROFS) {
				t.Fatalf("open for writing = %v, want EROFS", err)
			}
			b := make([]byte, 5)
			f, err := os.Open(e.Path())
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.ReadAt(b, 0); err != nil || string(b) != "hello" {
				t.Fatalf("read = %q, %v", b, err)
			}
		})
	}
}

func TestMountShape(t *testing.T) {
	requireFUSE(t)
	e := mount(t, blockdev.NewMem(1<<20), Options{Name: "vol"})
	entries, err := os.ReadDir(e.Dir())
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "vol" {
		t.Fatalf("mount holds %v, want just vol", entries)
	}
	if _, err := os.Stat(filepath.Join(e.Dir(), "other")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stat of another name = %v, want ErrNotExist", err)
	}
	mounts, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	var line string
	for l := range strings.Lines(string(mounts)) {
		if f := strings.Fields(l); len(f) > 3 && f[1] == e.Dir() {
			line = l
		}
	}
	f := strings.Fields(line)
	if len(f) < 4 || f[0] != "vdisk" || f[2] != "fuse.vdisk" || !strings.Contains(f[3], "max_read=1048576") {
		t.Fatalf("mount entry %q: want source vdisk, type fuse.vdisk, max_read=1048576", line)
	}
}
