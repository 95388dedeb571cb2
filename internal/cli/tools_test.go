package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeFile writes a file of size bytes with data at the offsets given.
func writeFile(t *testing.T, path string, size int64, pokes map[int64]byte) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for off, b := range pokes {
		if _, err := f.WriteAt([]byte{b}, off); err != nil {
			t.Fatal(err)
		}
	}
}

// TestCompareCommand: qemu-img compare's words and exit statuses: 0 and
// "Images are identical.", 1 and the mismatch (nothing on stderr), 2 when
// an image cannot be opened.
func TestCompareCommand(t *testing.T) {
	dir := t.TempDir()
	a, b, c, big := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img"), filepath.Join(dir, "c.img"), filepath.Join(dir, "big.img")
	writeFile(t, a, 4<<20, map[int64]byte{100: 1})
	writeFile(t, b, 4<<20, map[int64]byte{100: 1})
	writeFile(t, c, 4<<20, map[int64]byte{100: 1, 3<<20 + 1234: 2})
	writeFile(t, big, 5<<20, map[int64]byte{100: 1})
	for _, tc := range []struct {
		args   []string
		code   int
		stdout string
	}{
		{[]string{a, b}, 0, "Images are identical.\n"},
		{[]string{"-f", "raw", "-F", "raw", a, c}, 1, "Content mismatch at offset 3146752!\n"},
		{[]string{a, big}, 0, "Warning: Image size mismatch!\nImages are identical.\n"},
		{[]string{"-s", a, big}, 1, "Strict mode: Image size mismatch!\n"},
		{[]string{a, filepath.Join(dir, "missing")}, 2, ""},
	} {
		code, out, errs := run(t, append([]string{"compare"}, tc.args...)...)
		if code != tc.code || out != tc.stdout {
			t.Errorf("compare %v: exit %d %q (stderr %q), want %d %q", tc.args, code, out, errs, tc.code, tc.stdout)
		}
		if code == 1 && errs != "" {
			t.Errorf("compare %v: stderr %q", tc.args, errs)
		}
	}
	// -p: the bar on stderr, the verdict on stdout as without it.
	if code, out, errs := run(t, "compare", "-p", a, big); code != 0 || out != "Warning: Image size mismatch!\nImages are identical.\n" || !strings.Contains(errs, "compare") {
		t.Errorf("compare -p: exit %d %q %q", code, out, errs)
	}
	code, out, _ := run(t, "compare", "--json", a, c)
	if code != 1 || !strings.Contains(out, `"offset": 3146752`) || !strings.Contains(out, `"result": "content-mismatch"`) {
		t.Errorf("compare --json: exit %d %s", code, out)
	}
}

// TestMeasureCommand: qemu-img measure's lines, JSON and refusals.
func TestMeasureCommand(t *testing.T) {
	img := filepath.Join(t.TempDir(), "a.img")
	writeFile(t, img, 4<<20, map[int64]byte{0: 1})
	for _, tc := range []struct {
		args         []string
		code         int
		stdout, errs string
	}{
		{[]string{"-O", "qcow2", "--size", "1G"}, 0, "required size: 393216\nfully allocated size: 1074135040\n", ""},
		{[]string{"--size", "1000"}, 0, "required size: 1024\nfully allocated size: 1024\n", ""},
		{[]string{"-O", "qcow2", "--output=json", "--size", "1G"}, 0, "{\n    \"required\": 393216,\n    \"fully-allocated\": 1074135040\n}\n", ""},
		{[]string{img}, 0, "required size: 4194304\nfully allocated size: 4194304\n", ""},
		{[]string{}, 1, "", "Either --size N or one filename must be specified"},
		{[]string{"--size", "1G", img}, 1, "", "--size N cannot be used together with a filename"},
		{[]string{"-O", "iso", "--size", "1G"}, 1, "", "not a format vdisk measures"},
	} {
		code, out, errs := run(t, append([]string{"measure"}, tc.args...)...)
		if code != tc.code || out != tc.stdout || !strings.Contains(errs, tc.errs) {
			t.Errorf("measure %v: exit %d %q %q, want %d %q %q", tc.args, code, out, errs, tc.code, tc.stdout, tc.errs)
		}
	}
}

// TestDDCommand: operands as qemu-img dd takes them (with suffixes), its
// refusals, and seek= into an existing raw file that is not truncated.
func TestDDCommand(t *testing.T) {
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in.img"), filepath.Join(dir, "out.img")
	writeFile(t, in, 4<<20, map[int64]byte{1 << 20: 7, 2<<20 + 5: 8})
	// A qcow2 over in.img as its backing file: dd from it must not
	// replace its own backing file.
	base, top := in, filepath.Join(dir, "top.qcow2")
	if code, _, errs := run(t, "create", "-f", "qcow2", "-b", "in.img", "-F", "raw", top); code != 0 {
		t.Fatalf("create: %s", errs)
	}
	if code, _, errs := run(t, "dd", "if="+in, "of="+out, "bs=1M", "skip=1", "count=3"); code != 0 {
		t.Fatalf("dd: %d %s", code, errs)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2<<20 || got[0] != 7 || got[1<<20+5] != 8 {
		t.Errorf("dd wrote %d bytes", len(got))
	}
	writeFile(t, out, 8<<20, map[int64]byte{8<<20 - 1: 9})
	if code, _, errs := run(t, "dd", "if="+in, "of="+out, "bs=512", "skip=2048", "count=6k", "seek=1k"); code != 0 {
		t.Fatalf("dd seek: %d %s", code, errs)
	}
	if got, err = os.ReadFile(out); err != nil {
		t.Fatal(err)
	}
	if len(got) != 8<<20 || got[512<<10] != 7 || got[512<<10+1<<20+5] != 8 || got[8<<20-1] != 9 {
		t.Errorf("dd seek: %d bytes, %d %d %d", len(got), got[512<<10], got[512<<10+1<<20+5], got[8<<20-1])
	}
	for _, tc := range []struct {
		args []string
		errs string
	}{
		{[]string{"if=" + in}, "Must specify both input and output files"},
		{[]string{"if=" + in, "of=" + out, "bs=0"}, "Invalid bs specified"},
		{[]string{"if=" + in, "of=" + out, "count=x"}, "Invalid count specified"},
		{[]string{"if=" + in, "of=" + out, "conv=notrunc"}, "unrecognized operand conv"},
		{[]string{"if=" + in, "of=" + in}, "same file"},
		{[]string{"if=" + top, "of=" + base}, "in use"},
	} {
		code, _, errs := run(t, append([]string{"dd"}, tc.args...)...)
		if code == 0 || !strings.Contains(errs, tc.errs) {
			t.Errorf("dd %v: exit %d %q, want %q", tc.args, code, errs, tc.errs)
		}
	}
	// seek= past the end of an existing output grows it, as GNU dd does.
	fi, err := os.Stat(in)
	if err != nil {
		t.Fatal(err)
	}
	if code, _, errs := run(t, "dd", "if="+in, "of="+out, "bs=1M", "seek=100"); code != 0 {
		t.Fatalf("dd seek=100: exit %d: %s", code, errs)
	}
	if fo, err := os.Stat(out); err != nil || fo.Size() != 100<<20+fi.Size() {
		t.Fatalf("dd seek=100 past the end: output %v (%v), want %d bytes", fo.Size(), err, 100<<20+fi.Size())
	}
}
