//go:build linux

package blockdev

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// create makes a sparse image of size bytes in a fresh directory.
func create(t *testing.T, size int64) *File {
	t.Helper()
	f, err := OpenFile(filepath.Join(t.TempDir(), "disk.img"), FileOptions{Create: true, Size: size})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// blocks returns the 512-byte blocks allocated to path.
func blocks(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks
}

func TestFileCreateIsSparse(t *testing.T) {
	f := create(t, 64<<20)
	if f.Size() != 64<<20 {
		t.Errorf("Size() = %d", f.Size())
	}
	fi, err := os.Stat(f.Path())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != 64<<20 || fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("created file: size %d mode %v", fi.Size(), fi.Mode())
	}
	if b := blocks(t, f.Path()); b > 64 {
		t.Errorf("new 64 MiB image has %d blocks allocated, want (almost) none", b)
	}
}

func TestFileTrimFreesBlocks(t *testing.T) {
	f := create(t, 8<<20)
	data := bytes.Repeat([]byte{0xab}, 4<<20)
	if _, err := f.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	full := blocks(t, f.Path())
	if full < 4<<20/512 {
		t.Fatalf("after writing 4 MiB only %d blocks are allocated", full)
	}
	if err := f.Trim(1<<20, 2<<20); err != nil {
		t.Fatal(err)
	}
	if got, want := blocks(t, f.Path()), full-2<<20/512; got > want {
		t.Errorf("after punching 2 MiB: %d blocks, want at most %d (was %d)", got, want, full)
	}
	// ZERO_RANGE keeps the blocks; punching (mayTrim) releases them.
	before := blocks(t, f.Path())
	if err := f.WriteZeroes(0, 1<<20, false); err != nil {
		t.Fatal(err)
	}
	if got := blocks(t, f.Path()); got < before {
		t.Errorf("WriteZeroes without mayTrim released blocks: %d → %d", before, got)
	}
	if err := f.WriteZeroes(3<<20, 1<<20, true); err != nil {
		t.Fatal(err)
	}
	if got, want := blocks(t, f.Path()), before-1<<20/512; got > want {
		t.Errorf("WriteZeroes with mayTrim: %d blocks, want at most %d", got, want)
	}
	got := make([]byte, 4<<20)
	if _, err := f.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !IsZero(got) {
		t.Error("trimmed and zeroed ranges do not read as zeroes")
	}
}

func TestFileExtentsMatchWrites(t *testing.T) {
	f := create(t, 1<<20)
	for _, off := range []int64{64 << 10, 512 << 10, 1<<20 - 4096} {
		if _, err := f.WriteAt(bytes.Repeat([]byte{1}, 8192)[:min(8192, 1<<20-off)], off); err != nil {
			t.Fatal(err)
		}
	}
	// One byte in the middle of a block allocates the whole block.
	if _, err := f.WriteAt([]byte{1}, 300<<10+5); err != nil {
		t.Fatal(err)
	}
	hz := ExtentHole | ExtentZero
	want := []Extent{
		{0, 64 << 10, hz},
		{64 << 10, 8192, 0},
		{72 << 10, 228 << 10, hz},
		{300 << 10, 4096, 0},
		{304 << 10, 208 << 10, hz},
		{512 << 10, 8192, 0},
		{520 << 10, 1<<20 - 520<<10 - 4096, hz},
		{1<<20 - 4096, 4096, 0},
	}
	got, err := f.Extents(0, f.Size())
	if err != nil {
		t.Fatal(err)
	}
	if !equalExtents(got, want) {
		t.Errorf("extents\n got %+v\nwant %+v", got, want)
	}
	// A window starting inside a hole and ending inside data.
	got, err = f.Extents(10000, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	want = []Extent{{10000, 64<<10 - 10000, hz}, {64 << 10, 8192, 0}, {72 << 10, 10000 - 8192, hz}}
	if !equalExtents(got, want) {
		t.Errorf("window extents\n got %+v\nwant %+v", got, want)
	}
	// Punching the data makes it a hole again.
	if err := f.Trim(64<<10, 8192); err != nil {
		t.Fatal(err)
	}
	got, err = f.Extents(0, 300<<10)
	if err != nil {
		t.Fatal(err)
	}
	if want := []Extent{{0, 300 << 10, hz}}; !equalExtents(got, want) {
		t.Errorf("after trim\n got %+v\nwant %+v", got, want)
	}
}

func equalExtents(a, b []Extent) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestFileLocks(t *testing.T) {
	p := filepath.Join(t.TempDir(), "disk.img")
	w, err := OpenFile(p, FileOptions{Create: true, Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		opt  FileOptions
	}{
		{"second writer", FileOptions{}},
		{"reader", FileOptions{ReadOnly: true}},
		{"second creator", FileOptions{Create: true, Size: 4096}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := OpenFile(p, tc.opt)
			if !errors.Is(err, ErrLocked) {
				t.Fatalf("open while a writer holds the image: %v, want ErrLocked", err)
			}
			if !strings.Contains(err.Error(), p) {
				t.Errorf("error %q does not name the image", err)
			}
		})
	}
	t.Run("NoLock", func(t *testing.T) {
		f, err := OpenFile(p, FileOptions{NoLock: true})
		if err != nil {
			t.Fatalf("open with NoLock: %v", err)
		}
		f.Close()
	})
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	// Readers share; a writer is refused while one reads.
	r1, err := OpenFile(p, FileOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("first reader: %v", err)
	}
	r2, err := OpenFile(p, FileOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("second reader: %v", err)
	}
	if _, err := OpenFile(p, FileOptions{}); !errors.Is(err, ErrLocked) {
		t.Errorf("writer while readers hold the image: %v, want ErrLocked", err)
	}
	r1.Close()
	r2.Close()
	w, err = OpenFile(p, FileOptions{})
	if err != nil {
		t.Fatalf("writer after the readers closed: %v", err)
	}
	w.Close()
}

func TestFileOpenErrors(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	existing := filepath.Join(dir, "existing.img")
	if err := os.WriteFile(existing, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		path    string
		opt     FileOptions
		wantIs  error  // nil: no sentinel expected
		wantMsg string // the error names this
	}{
		{"missing", filepath.Join(dir, "nope.img"), FileOptions{}, fs.ErrNotExist, "nope.img"},
		{"directory", dir, FileOptions{}, nil, "is a directory"},
		{"directory read-only", dir, FileOptions{ReadOnly: true}, nil, "is a directory"},
		{"fifo", fifo, FileOptions{}, nil, "a FIFO, not an image file"},
		{"character device", "/dev/null", FileOptions{ReadOnly: true}, nil, "a character device, not an image file"},
		{"create in a missing directory", filepath.Join(dir, "no/such/dir/x.img"), FileOptions{Create: true, Size: 4096}, nil, "directory " + filepath.Join(dir, "no/such/dir") + " does not exist"},
		{"create with an odd size", filepath.Join(dir, "odd.img"), FileOptions{Create: true, Size: 1000}, nil, "multiple of 512"},
		{"create with no size", filepath.Join(dir, "zero.img"), FileOptions{Create: true}, nil, "multiple of 512"},
		{"create read-only", filepath.Join(dir, "ro.img"), FileOptions{Create: true, ReadOnly: true, Size: 4096}, nil, "read-only"},
		{"create too large", filepath.Join(dir, "huge.img"), FileOptions{Create: true, Size: 1 << 60}, nil, "too large"},
		{"create over a directory", dir, FileOptions{Create: true, Size: 4096}, nil, "is a directory"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := OpenFile(tc.path, tc.opt)
			if err == nil {
				f.Close()
				t.Fatal("open succeeded")
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Errorf("error %v, want %v", err, tc.wantIs)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not say %q", err, tc.wantMsg)
			}
		})
	}
	for _, name := range []string{"odd.img", "zero.img", "ro.img", "huge.img"} {
		if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("failed create left %s behind (%v)", name, err)
		}
	}
	// Create of an existing file opens it as it is: Size is ignored.
	f, err := OpenFile(existing, FileOptions{Create: true, Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if f.Size() != 4096 {
		t.Errorf("existing image opened with Create has size %d, want 4096", f.Size())
	}
	f.Close()
	// Even with no size at all.
	f, err = OpenFile(existing, FileOptions{Create: true})
	if err != nil {
		t.Fatalf("open of an existing image with Create and no size: %v", err)
	}
	if f.Size() != 4096 {
		t.Errorf("existing image opened with Create has size %d, want 4096", f.Size())
	}
	f.Close()
}

func TestFileReadOnly(t *testing.T) {
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(p, bytes.Repeat([]byte("ro"), 2048), 0o400); err != nil {
		t.Fatal(err)
	}
	f, err := OpenFile(p, FileOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if !f.Info().ReadOnly || f.Info().LogicalBlockSize != 512 {
		t.Errorf("Info() = %+v, want read-only with 512-byte blocks", f.Info())
	}
	if _, err := f.WriteAt([]byte{1}, 0); !errors.Is(err, ErrReadOnly) {
		t.Errorf("WriteAt: %v, want ErrReadOnly", err)
	}
	if err := f.Trim(0, 512); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Trim: %v, want ErrReadOnly", err)
	}
	b := make([]byte, 4)
	if _, err := f.ReadAt(b, 100); err != nil || string(b) != "roro" {
		t.Errorf("ReadAt = %q, %v", b, err)
	}
}

func TestFileTruncatedUnderneath(t *testing.T) {
	f := create(t, 1<<20)
	if err := os.Truncate(f.Path(), 4096); err != nil {
		t.Fatal(err)
	}
	_, err := f.ReadAt(make([]byte, 512), 8192)
	if !errors.Is(err, io.ErrUnexpectedEOF) || Errno(err) != syscall.EIO {
		t.Errorf("read past the shortened file: %v (errno %v), want ErrUnexpectedEOF, EIO", err, Errno(err))
	}
}

func TestFileFd(t *testing.T) {
	f := create(t, 1<<20)
	if _, err := f.WriteAt([]byte("fd"), 10); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 2)
	if _, err := syscall.Pread(int(f.Fd()), b, 10); err != nil || string(b) != "fd" {
		t.Errorf("pread on Fd() = %q, %v", b, err)
	}
}

func TestFileExtentsBounded(t *testing.T) {
	const blocks = 1100 // data blocks, each followed by a hole: 2200 extents
	f := create(t, blocks*8192)
	for i := range int64(blocks) {
		if _, err := f.WriteAt([]byte{1}, i*8192); err != nil {
			t.Fatal(err)
		}
	}
	got, err := f.Extents(0, f.Size())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != maxFileExtents {
		t.Fatalf("Extents returned %d extents, want the bound %d", len(got), maxFileExtents)
	}
	// Asking again from where each answer stopped covers the file.
	pos, n := int64(0), 0
	for pos < f.Size() {
		ext, err := f.Extents(pos, f.Size()-pos)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ext {
			want := ExtentFlags(0)
			if n%2 == 1 {
				want = ExtentHole | ExtentZero
			}
			if e.Off != pos || e.Len != 4096 || e.Flags != want {
				t.Fatalf("extent %d = %+v, want 4096 bytes at %d with flags %d", n, e, pos, want)
			}
			pos += e.Len
			n++
		}
	}
	if n != 2*blocks {
		t.Errorf("walked %d extents, want %d", n, 2*blocks)
	}
}
