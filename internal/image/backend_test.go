package image_test

import (
	"bytes"
	"errors"
	"io"
	"sync"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
	_ "vdisk/internal/image/all"
	"vdisk/internal/image/imagetest"
)

func TestBackendFile(t *testing.T) {
	b := imagetest.NewMemBackend(1 << 20)
	f := image.NewBackendFile(b)
	if n, _ := f.Size(); n != 0 {
		t.Fatalf("empty file has size %d", n)
	}
	// Writes from many goroutines grow the file to the furthest end.
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			if _, err := f.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, 4096), int64(i)*4096); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n, _ := f.Size(); n != 16*4096 {
		t.Fatalf("size after writes %d, want %d", n, 16*4096)
	}
	// A read across the end is short with io.EOF, like a file's.
	p := make([]byte, 8192)
	n, err := f.ReadAt(p, 15*4096)
	if n != 4096 || !errors.Is(err, io.EOF) || p[0] != 16 {
		t.Fatalf("read across the end: n=%d err=%v first=%d", n, err, p[0])
	}
	if n, err := f.ReadAt(p, 1<<19); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("read past the end: n=%d err=%v", n, err)
	}
	// Punch zeroes inside the file and ignores what lies past it.
	if err := f.Punch(4096, 1<<20); err != nil {
		t.Fatalf("Punch: %v", err)
	}
	if _, err := f.ReadAt(p[:4096], 8192); err != nil || !bytes.Equal(p[:4096], make([]byte, 4096)) {
		t.Fatalf("punched range reads %v (%v)", p[:8], err)
	}
	// The capacity bounds growth.
	if _, err := f.WriteAt(p, 1<<20-100); !errors.Is(err, blockdev.ErrNoSpace) {
		t.Fatalf("write past the capacity: %v, want ErrNoSpace", err)
	}
}

// TestEveryFormatInABackend: every format that creates images creates,
// writes and reopens one whose file is a Backend (an object store's
// chunks); none of them names another file.
func TestEveryFormatInABackend(t *testing.T) {
	for _, name := range image.Formats() {
		fm, _ := image.Lookup(name)
		if fm.CreateFile == nil {
			continue
		}
		t.Run(name, func(t *testing.T) {
			b := imagetest.NewMemBackend(64 << 20)
			f := image.NewNamedBackendFile(b, "s3://b/"+name)
			if err := image.CreateIn(f, image.CreateOptions{Format: name, Size: 4 << 20}); err != nil {
				t.Fatalf("create: %v", err)
			}
			dev, err := image.OpenFile(f, image.OpenOptions{Format: name, Names: image.NoNames{Why: "test"}})
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			data := bytes.Repeat([]byte{0x5a}, 64<<10)
			if _, err := dev.WriteAt(data, 1<<20); err != nil {
				t.Fatalf("write: %v", err)
			}
			if err := dev.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
			dev, err = image.OpenFile(image.NewNamedBackendFile(b, "s3://b/"+name), image.OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatalf("reopen (probed): %v", err)
			}
			defer dev.Close()
			got := make([]byte, len(data))
			if _, err := dev.ReadAt(got, 1<<20); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read back: %v", err)
			}
		})
	}
}

func TestLookupAlias(t *testing.T) {
	f, err := image.Lookup("vpc")
	if err != nil || f.Name != "vhd" {
		t.Fatalf("Lookup(vpc) = %v, %v; want vhd (qemu's name for it)", f, err)
	}
}
