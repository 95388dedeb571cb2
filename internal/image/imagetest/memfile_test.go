package imagetest

import (
	"errors"
	"io"
	"os"
	"sync"
	"testing"

	"vdisk/internal/blockdev"
)

func TestMemFile(t *testing.T) {
	f := NewMemFile("m", []byte("abc"))
	buf := make([]byte, 5)
	if n, err := f.ReadAt(buf, 1); n != 2 || !errors.Is(err, io.EOF) {
		t.Fatalf("read past the end: %d, %v", n, err)
	}
	if _, err := f.WriteAt([]byte("xy"), 6); err != nil {
		t.Fatal(err)
	}
	if got := string(f.Bytes()); got != "abc\x00\x00\x00xy" {
		t.Fatalf("after a write past the end: %q", got)
	}
	if err := f.Punch(1, 100); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(4); err != nil {
		t.Fatal(err)
	}
	if got := string(f.Bytes()); got != "a\x00\x00\x00" {
		t.Fatalf("after punch and truncate: %q", got)
	}
	f.SetMax(8)
	if _, err := f.WriteAt(make([]byte, 9), 0); !errors.Is(err, blockdev.ErrNoSpace) {
		t.Fatalf("write past max: %v", err)
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			f.WriteAt([]byte{byte(i)}, int64(i))
			f.ReadAt(make([]byte, 8), 0)
			f.Size()
		})
	}
	wg.Wait()
	g := f.Reopen()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(buf, 0); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}
	if n, _ := g.Size(); n != 8 || g.Identity() != f.Identity() {
		t.Fatalf("reopened handle: size %d, identity %q vs %q", n, g.Identity(), f.Identity())
	}
}
