package vhdx

import (
	"path/filepath"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// TestExtentsSeeFileHoles checks that a fixed image, whose blocks are all
// allocated in a sparse file, reports the file's holes as zeroes, and a
// dynamic one its unallocated blocks, with data only where written.
func TestExtentsSeeFileHoles(t *testing.T) {
	for _, sub := range []string{"fixed", "dynamic"} {
		t.Run(sub, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "img.vhdx")
			if err := Create(p, image.CreateOptions{Format: Name, Size: 4 << 20, Options: map[string]string{"subformat": sub}, ClusterSize: 1 << 20}); err != nil {
				t.Fatal(err)
			}
			d, err := Open(p, image.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if _, err := d.WriteAt(make([]byte, 8192), 2<<20); err != nil {
				t.Fatal(err)
			}
			if _, err := d.WriteAt([]byte("data"), 2<<20+100); err != nil {
				t.Fatal(err)
			}
			ext, err := blockdev.Extents(d, 0, d.Size())
			if err != nil {
				t.Fatal(err)
			}
			checkExtents(t, ext, d.Size(), 2<<20+100)
		})
	}
}

// checkExtents verifies that ext covers [0, size) contiguously, that the
// byte at data is in a data extent, and that the byte at 1 MiB and the last byte read
// as zeroes (byte 0 may share a file system block with metadata).
func checkExtents(t *testing.T, ext []blockdev.Extent, size, data int64) {
	t.Helper()
	at := int64(0)
	flags := func(off int64) blockdev.ExtentFlags {
		for _, e := range ext {
			if e.Off <= off && off < e.Off+e.Len {
				return e.Flags
			}
		}
		t.Fatalf("no extent covers %d: %v", off, ext)
		return 0
	}
	for _, e := range ext {
		if e.Off != at || e.Len <= 0 {
			t.Fatalf("extents not contiguous at %d: %v", at, ext)
		}
		at += e.Len
	}
	if at != size {
		t.Fatalf("extents end at %d, size %d", at, size)
	}
	if flags(data) != 0 || flags(1<<20)&blockdev.ExtentZero == 0 || flags(size-1)&blockdev.ExtentZero == 0 {
		t.Fatalf("extents %v", ext)
	}
}
