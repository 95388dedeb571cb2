//go:build linux

package blockdev_test

import (
	"path/filepath"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/blockdev/blockdevtest"
)

// plain hides every optional capability of a Device.
type plain struct{ blockdev.Device }

func TestConformance(t *testing.T) {
	tests := []struct {
		name string
		open blockdevtest.Open
	}{
		{"Mem", func(t *testing.T, size int64) blockdev.Device { return blockdev.NewMem(size) }},
		{"File", func(t *testing.T, size int64) blockdev.Device {
			f, err := blockdev.OpenFile(filepath.Join(t.TempDir(), "disk.img"), blockdev.FileOptions{Create: true, Size: size})
			if err != nil {
				t.Fatal(err)
			}
			return f
		}},
		{"File read-only", func(t *testing.T, size int64) blockdev.Device {
			p := filepath.Join(t.TempDir(), "disk.img")
			w, err := blockdev.OpenFile(p, blockdev.FileOptions{Create: true, Size: size})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.WriteAt([]byte("some data"), 70000); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			f, err := blockdev.OpenFile(p, blockdev.FileOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			return f
		}},
		{"ReadOnly(Mem)", func(t *testing.T, size int64) blockdev.Device {
			m := blockdev.NewMem(size)
			if _, err := m.WriteAt([]byte("some data"), size-100); err != nil {
				t.Fatal(err)
			}
			return blockdev.ReadOnly(m)
		}},
		{"Section(Mem)", func(t *testing.T, size int64) blockdev.Device {
			return blockdev.Section(blockdev.NewMem(size+3*512), 1024, size)
		}},
		{"Section(plain Mem)", func(t *testing.T, size int64) blockdev.Device {
			return blockdev.Section(plain{blockdev.NewMem(size + 64<<10)}, 64<<10, size)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { blockdevtest.Run(t, tc.open) })
	}
}
