package vmdk

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"vdisk/internal/image"
)

// TestLayerStatusZeroExtent checks a disk of a flat extent followed by a
// ZERO extent (which qemu skips): each run stops at its extent's end, the
// flat one is data in its file at the extent's offset (zeroes over the
// file's holes, as qemu's flat extents), the ZERO one allocated zeroes.
func TestLayerStatusZeroExtent(t *testing.T) {
	p := filepath.Join(t.TempDir(), "img.vmdk")
	if err := createPath(p, image.CreateOptions{Format: Name, Size: 1 << 20, Options: map[string]string{"subformat": MonolithicFlat}}); err != nil {
		t.Fatal(err)
	}
	desc, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	flat := regexp.MustCompile(`(?m)^RW 2048 FLAT .*$`)
	if !flat.Match(desc) {
		t.Fatalf("no flat extent line in\n%s", desc)
	}
	desc = flat.ReplaceAll(desc, []byte("$0\nRW 4096 ZERO"))
	if err := os.WriteFile(p, desc, 0o644); err != nil {
		t.Fatal(err)
	}
	d, err := openPath(p, image.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.WriteAt([]byte{1}, 4096); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	if d.Size() != 3<<20 {
		t.Fatalf("size %d, want 3 MiB", d.Size())
	}
	var got []image.MapEntry
	if err := image.Map(d, 0, d.Size(), func(e image.MapEntry) error { got = append(got, e); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) < 2 {
		t.Fatalf("map %+v: want the flat extent, then the ZERO extent", got)
	}
	last := got[len(got)-1]
	if want := (image.MapEntry{Start: 1 << 20, Length: 2 << 20, Present: true, Zero: true}); last != want {
		t.Errorf("ZERO extent: %+v, want %+v", last, want)
	}
	for _, e := range got[:len(got)-1] {
		if !e.Present || !e.Data || !e.HasOffset || e.Offset != e.Start || filepath.Base(e.File) != "img-flat.vmdk" {
			t.Errorf("flat extent run %+v: want present data at its own offset of img-flat.vmdk", e)
		}
		if holds := e.Start <= 4096 && 4096 < e.Start+e.Length; holds == e.Zero {
			t.Errorf("flat extent run %+v: zero %v, but the write at 4096 is in it: %v", e, e.Zero, holds)
		}
	}
}
