package imagetest

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// MaxRefusalAlloc is what refusing a hostile image may allocate at most.
const MaxRefusalAlloc = 64 << 20

// Refused opens b, a file of size bytes (at least len(b); the rest reads
// as zeroes), as an image of format, and fails the test unless the open
// is refused having allocated at most MaxRefusalAlloc, and InfoOf and
// CheckOf refuse it too. It returns the open's error, for the caller to
// check what it says.
func Refused(t testing.TB, format string, b []byte, size int64) error {
	t.Helper()
	file := func() image.File {
		f := NewMemFile("hostile."+format, b)
		if err := f.Truncate(max(size, int64(len(b)))); err != nil {
			t.Fatal(err)
		}
		return f
	}
	f := file()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	d, err := image.OpenFile(f, image.OpenOptions{Format: format, ReadOnly: true})
	runtime.ReadMemStats(&after)
	if err == nil {
		d.Close()
		t.Fatal("the hostile image opened")
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > MaxRefusalAlloc {
		t.Errorf("the refused open allocated %d MiB", grew>>20)
	}
	if _, err := image.InfoOf(file(), format); err == nil {
		t.Errorf("Info accepted the image")
	}
	if r, err := image.CheckOf(file(), format, image.CheckOptions{}); err == nil && r.Clean() {
		t.Errorf("Check found it clean")
	}
	return err
}

// fuzzReadLimit bounds how much of an opened image FuzzFormat reads.
const fuzzReadLimit = 1 << 20

// FuzzFormat fuzzes the format's parsers over in-memory files, seeded
// from the files glob matches and from seeds: describing, checking and
// opening arbitrary bytes must never panic, hang or allocate without
// bound, and what opens must read, describe its extents and map (block
// status) its first and last bytes.
func FuzzFormat(f *testing.F, format, glob string, seeds ...[]byte) {
	paths, _ := filepath.Glob(glob)
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		image.InfoOf(NewMemFile("fuzz", b), format)
		image.CheckOf(NewMemFile("fuzz", b), format, image.CheckOptions{})
		d, err := image.OpenFile(NewMemFile("fuzz", b), image.OpenOptions{Format: format, ReadOnly: true, NoBacking: true})
		if err != nil {
			return
		}
		defer d.Close()
		n := min(d.Size(), fuzzReadLimit)
		buf := make([]byte, n)
		if _, err := d.ReadAt(buf, 0); err != nil {
			t.Fatalf("read of an opened image: %v", err)
		}
		if _, err := d.ReadAt(buf, d.Size()-n); err != nil {
			t.Fatalf("read of an opened image: %v", err)
		}
		if _, err := blockdev.Extents(d, 0, d.Size()); err != nil {
			t.Fatalf("extents of an opened image: %v", err)
		}
		CheckMap(t, d, 0, n)
		CheckMap(t, d, d.Size()-n, n)
	})
}

// CheckMap maps [off, off+n) of d (image.Map: vdisk map, commit, compare
// -s) and fails t unless the entries tile the range; an error (a corrupt
// table found on the way) is fine.
func CheckMap(t testing.TB, d blockdev.Device, off, n int64) {
	t.Helper()
	next := off
	err := image.Map(d, off, n, func(e image.MapEntry) error {
		if e.Start != next || e.Length <= 0 {
			t.Fatalf("map entry %+v after %d", e, next)
		}
		next = e.Start + e.Length
		return nil
	})
	if err == nil && next != off+n {
		t.Fatalf("map of [%d, %d) ended at %d", off, off+n, next)
	}
}
