package cli

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"vdisk/internal/image"
)

// mapOf writes entries as writeMap does over [start, end).
func mapOf(t *testing.T, asJSON bool, start, end int64, es ...image.MapEntry) (string, error) {
	t.Helper()
	var b bytes.Buffer
	err := writeMap(&b, asJSON, start, end, "img", func(fn func(image.MapEntry) error) error {
		for _, e := range es {
			if err := fn(e); err != nil {
				return err
			}
		}
		return nil
	})
	return b.String(), err
}

// TestWriteMap: qemu-img map's two outputs, byte for byte as qemu 10
// prints them: the JSON list (offset only when there is one), the table
// of the data runs with C's %#x (a bare 0), the name of a raw top layer
// without one, an empty range as one empty run, and the table's failure
// on compressed clusters after the header.
func TestWriteMap(t *testing.T) {
	es := []image.MapEntry{
		{Start: 0, Length: 4096, Present: true, Data: true, HasOffset: true, Offset: 0},
		{Start: 4096, Length: 61440, Present: true, Zero: true, HasOffset: true, Offset: 4096},
		{Start: 65536, Length: 65536, Depth: 1, Present: true, Data: true, HasOffset: true, Offset: 327680, File: "/d/base.qcow2"},
		{Start: 131072, Length: 65536, Depth: 1, Zero: true},
	}
	got, err := mapOf(t, true, 0, 196608, es...)
	want := `[{ "start": 0, "length": 4096, "depth": 0, "present": true, "zero": false, "data": true, "compressed": false, "offset": 0},
{ "start": 4096, "length": 61440, "depth": 0, "present": true, "zero": true, "data": false, "compressed": false, "offset": 4096},
{ "start": 65536, "length": 65536, "depth": 1, "present": true, "zero": false, "data": true, "compressed": false, "offset": 327680},
{ "start": 131072, "length": 65536, "depth": 1, "present": false, "zero": true, "data": false, "compressed": false}]
`
	if err != nil || got != want {
		t.Errorf("json: %v\n%s\nwant\n%s", err, got, want)
	}
	got, err = mapOf(t, false, 0, 196608, es...)
	want = "Offset          Length          Mapped to       File\n" +
		"0               0x1000          0               img\n" +
		"0x10000         0x10000         0x50000         /d/base.qcow2\n"
	if err != nil || got != want {
		t.Errorf("human: %v\n%s\nwant\n%s", err, got, want)
	}

	got, err = mapOf(t, true, 1<<30, 1<<30)
	want = `[{ "start": 1073741824, "length": 0, "depth": 0, "present": false, "zero": false, "data": false, "compressed": false}]` + "\n"
	if err != nil || got != want {
		t.Errorf("empty: %v\n%s\nwant\n%s", err, got, want)
	}

	comp := []image.MapEntry{es[0], {Start: 4096, Length: 65536, Present: true, Data: true, Compressed: true}}
	got, err = mapOf(t, false, 0, 69632, comp...)
	if !errors.Is(err, errMapUnmappable) || got != "Offset          Length          Mapped to       File\n0               0x1000          0               img\n" {
		t.Errorf("compressed in the table: %v\n%s", err, got)
	}
	if _, err := mapOf(t, true, 0, 69632, comp...); err != nil {
		t.Errorf("compressed in JSON: %v", err)
	}
}

// TestMapCommand: vdisk map on an image vdisk made, its exit status on a
// missing file and on a bad option.
func TestMapCommand(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "d.qcow2")
	if code, _, errs := run(t, "create", "-f", "qcow2", "--size", "1M", p); code != 0 {
		t.Fatalf("create: %s", errs)
	}
	code, out, errs := run(t, "map", "--output=json", p)
	want := `[{ "start": 0, "length": 1048576, "depth": 0, "present": false, "zero": true, "data": false, "compressed": false}]` + "\n"
	if code != 0 || out != want {
		t.Errorf("map: exit %d %q (%s), want %q", code, out, errs, want)
	}
	code, out, _ = run(t, "map", "--start-offset", "512k", "--max-length", "0", p)
	if code != 0 || out != "Offset          Length          Mapped to       File\n" {
		t.Errorf("empty table: exit %d %q", code, out)
	}
	if code, _, errs := run(t, "map", filepath.Join(dir, "missing")); code != 1 || !strings.Contains(errs, "missing") {
		t.Errorf("missing image: exit %d %s", code, errs)
	}
	if code, _, _ := run(t, "map", "--output=xml", p); code != 1 {
		t.Errorf("--output=xml: exit %d", code)
	}
	if code, _, _ := run(t, "map", "--start-offset", "-1", p); code != 1 {
		t.Errorf("--start-offset -1: exit %d", code)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatal(err)
	}
}
