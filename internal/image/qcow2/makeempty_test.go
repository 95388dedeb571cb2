package qcow2

import (
	"bytes"
	"path/filepath"
	"testing"

	"vdisk/internal/image"
	"vdisk/internal/image/imagetest"
)

// MakeEmpty drops data, compressed and zero clusters alike, in every
// layout, keeps what a snapshot shares, and leaves an image qemu-img
// checks clean, reading its backing file everywhere.
func TestMakeEmpty(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	for _, tc := range []struct {
		name string
		cs   int64
		opts map[string]string
		snap bool
	}{
		{name: "v3"},
		{name: "v2", cs: 4096, opts: map[string]string{"compat": "0.10"}},
		{name: "extl2", opts: map[string]string{"extended_l2": "on"}},
		{name: "snapshot", snap: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			const size = 4 << 20
			base := filepath.Join(dir, "base.qcow2")
			create(t, base, size, 0, nil, "", "")
			bimg := openImage(t, base, image.OpenOptions{})
			want := pattern(size, 1)
			if _, err := bimg.WriteAt(want, 0); err != nil {
				t.Fatal(err)
			}
			if err := bimg.Close(); err != nil {
				t.Fatal(err)
			}
			top := filepath.Join(dir, "top.qcow2")
			create(t, top, size, tc.cs, tc.opts, "base.qcow2", "qcow2")
			img := openImage(t, top, image.OpenOptions{})
			if _, err := img.WriteAt(pattern(1<<20, 2), 512<<10); err != nil {
				t.Fatal(err)
			}
			if err := img.WriteCompressed(pattern(img.cs, 3), 2<<20); err != nil {
				t.Fatal(err)
			}
			if err := img.WriteZeroes(3<<20, 128<<10, false); err != nil {
				t.Fatal(err)
			}
			if tc.snap {
				if _, err := img.CreateSnapshot("s1"); err != nil {
					t.Fatal(err)
				}
				if _, err := img.WriteAt(pattern(64<<10, 4), 0); err != nil {
					t.Fatal(err)
				}
			}
			if err := img.MakeEmpty(); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, size)
			if _, err := img.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("the emptied image does not read its backing file")
			}
			for off := int64(0); off < size; {
				st, err := img.LayerStatus(off, size-off)
				if err != nil {
					t.Fatal(err)
				}
				if st.Allocated {
					t.Fatalf("run at %d (%d bytes) still allocated", off, st.Len)
				}
				off += st.Len
			}
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			qemuCheck(t, top)
			if !bytes.Equal(qemuRaw(t, top), want) {
				t.Fatal("qemu-img reads the emptied image differently")
			}
			if tc.snap {
				imagetest.Run(t, "qemu-img", "snapshot", "-a", "s1", top)
				qemuCheck(t, top)
			}
		})
	}
}
