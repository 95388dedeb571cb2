//go:build linux

package blockdev

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"
)

func TestFileCreateReadWrite(t *testing.T) {
	p := filepath.Join(t.TempDir(), "disk.img")
	f, err := OpenFile(p, FileOptions{Create: true, Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if f.Size() != 1<<20 {
		t.Fatalf("size %d", f.Size())
	}
	want := bytes.Repeat([]byte{7}, 4096)
	if _, err := f.WriteAt(want, 8192); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if _, err := f.ReadAt(got, 8192); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read back: %v", err)
	}
	if _, err := OpenFile(p, FileOptions{}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v, want ErrLocked", err)
	}
	ext, err := f.Extents(0, f.Size())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", ext)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("double close: %v", err)
	}
}
