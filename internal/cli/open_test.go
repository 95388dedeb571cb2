package cli

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"vdisk/internal/api"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// normalizers replace the fields of a record that vary from run to run.
var normalizers = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`"id": "[0-9a-f]{12}"`), `"id": "ID"`},
	{regexp.MustCompile(`"unique_id": "[0-9a-f]{64}"`), `"unique_id": "UNIQUE_ID"`},
	{regexp.MustCompile(`"device": "/dev/loop[0-9]+"`), `"device": "/dev/loopN"`},
	{regexp.MustCompile(`"minor": [0-9]+`), `"minor": 0`},
	{regexp.MustCompile(`"devno": "7:[0-9]+"`), `"devno": "7:N"`},
	{regexp.MustCompile(`"opened_at": "[^"]+"`), `"opened_at": "TIME"`},
	{regexp.MustCompile(`"allocated": [0-9]+`), `"allocated": 0`},
}

// golden compares out, with dir and varying fields normalised, to
// testdata/disk/name (rewritten with -update).
func golden(t *testing.T, name, out, dir string) {
	t.Helper()
	got := strings.ReplaceAll(out, dir, "$DIR")
	for _, n := range normalizers {
		got = n.re.ReplaceAllString(got, n.with)
	}
	file := filepath.Join("testdata", "disk", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Fatalf("%s differs from %s:\n%s", name, file, got)
	}
}

// mustRun runs a command line that must succeed and returns its stdout.
func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errs := run(t, args...)
	if code != 0 {
		t.Fatalf("vdisk %s: exit %d, stderr %q", strings.Join(args, " "), code, errs)
	}
	return out
}

func TestOpenJSONGolden(t *testing.T) {
	socket, dir := inProcessDaemon(t)
	file := filepath.Join(dir, "a.img")
	out := mustRun(t, "open", "--socket", socket, file, "--json")
	golden(t, "open.json", out, dir)
	var d api.Disk
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatal(err)
	}
	if d.ID != api.DiskID(file) || d.UniqueID != api.UniqueID(file) || d.DevNo == "" {
		t.Fatalf("record %+v: id not the hash of %s", d, file)
	}
	golden(t, "list.json", mustRun(t, "list", "--socket", socket, "--json"), dir)
	golden(t, "info-open.json", mustRun(t, "info", "--socket", socket, "--json", file), dir)
	mustRun(t, "close", "--socket", socket, d.ID)
	golden(t, "info-closed.json", mustRun(t, "info", "--socket", socket, "--json", file), dir)
	golden(t, "list-empty.json", mustRun(t, "list", "--socket", socket, "--json"), dir)
}

func TestOpenPlain(t *testing.T) {
	socket, dir := inProcessDaemon(t)
	t.Chdir(dir)
	out := mustRun(t, "open", "--socket", socket, "b.img", "--size", "8M", "--via", "loop")
	f := strings.Fields(out)
	if len(f) != 2 || !strings.HasPrefix(f[0], "/dev/loop") || f[1] != api.DiskID(filepath.Join(dir, "b.img")) {
		t.Fatalf("open printed %q, want DEVICE ID", out)
	}
	if fi, err := os.Stat("b.img"); err != nil || fi.Size() != 8<<20 {
		t.Fatalf("created %v, %v; want 8 MiB", fi, err)
	}
	// Already open: the error names the device and id; --reuse answers it.
	code, _, errs := run(t, "open", "--socket", socket, "b.img")
	if code == 0 || !strings.Contains(errs, "already open as "+f[0]+" (id "+f[1]+")") || strings.Count(errs, "\n") != 1 {
		t.Fatalf("second open: exit %d, stderr %q", code, errs)
	}
	if again := mustRun(t, "open", "--socket", socket, "--reuse", "b.img"); again != out {
		t.Fatalf("--reuse printed %q, want %q", again, out)
	}
	// Read-only: a new disk on an existing file, ro in the record.
	if err := os.WriteFile("ro.img", make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	var d api.Disk
	if err := json.Unmarshal([]byte(mustRun(t, "open", "--socket", socket, "--read-only", "--json", "ro.img")), &d); err != nil {
		t.Fatal(err)
	}
	if !d.ReadOnly || d.Size != 1<<20 {
		t.Fatalf("read-only record %+v", d)
	}
}

func TestOpenErrors(t *testing.T) {
	socket, dir := inProcessDaemon(t)
	if err := os.WriteFile(filepath.Join(dir, "x.img"), make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "directory", args: []string{"open", dir}, want: "vdisk: " + dir + " is a directory, not an image file\n"},
		{name: "device", args: []string{"open", "/dev/null"}, want: "vdisk: /dev/null is a device, not an image file\n"},
		{name: "parent missing", args: []string{"open", filepath.Join(dir, "no", "a.img")}, want: "parent directory " + filepath.Join(dir, "no") + " does not exist\n"},
		{name: "invalid size", args: []string{"open", filepath.Join(dir, "a.img"), "--size", "1.5G"}, want: `vdisk: invalid size "1.5G"`},
		{name: "zero size", args: []string{"open", filepath.Join(dir, "a.img"), "--size", "0"}, want: "must be more than zero"},
		{name: "bad via", args: []string{"open", filepath.Join(dir, "a.img"), "--via", "iscsi"}, want: `vdisk: --via "iscsi": want ublk, nbd, loop or fuse` + "\n"},
		{name: "unknown format", args: []string{"open", filepath.Join(dir, "x.img"), "--format", "vhd9"}, want: `"vhd9": unknown image format`},
		{name: "no file", args: []string{"open"}, want: "accepts 1 arg(s), received 0"},
		{name: "s3 flags on a file", args: []string{"open", filepath.Join(dir, "a.img"), "--s3-endpoint", "http://127.0.0.1:1"}, want: "is not an s3:// image: --s3-endpoint"},
		{name: "bad s3 url", args: []string{"open", "s3://", "--s3-endpoint", "http://127.0.0.1:1"}, want: "not an s3://bucket/prefix URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errs := run(t, append(tt.args, "--socket", socket)...)
			if code == 0 || out != "" || !strings.Contains(errs, tt.want) || strings.Count(errs, "\n") != 1 {
				t.Fatalf("exit %d, stdout %q, stderr %q; want one line with %q", code, out, errs, tt.want)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "a.img")); !os.IsNotExist(err) {
		t.Fatalf("a refused open created the file: %v", err)
	}
}

// TestOpenViaMissingModule: --via nbd or ublk on a kernel without the
// module is one line naming it, and creates no file.
func TestOpenViaMissingModule(t *testing.T) {
	socket, dir := inProcessDaemon(t)
	for _, tt := range []struct{ via, dev, want string }{
		{"nbd", "/dev/nbd0", "vdisk: --via nbd: the kernel nbd client is not available: no netlink family and no /dev/nbd0 (modprobe nbd)\n"},
		{"ublk", "/dev/ublk-control", "vdisk: --via ublk: ublk is not available: /dev/ublk-control is missing (modprobe ublk_drv)\n"},
	} {
		t.Run(tt.via, func(t *testing.T) {
			if _, err := os.Stat(tt.dev); err == nil {
				t.Skipf("this kernel has %s: the VM tests (internal/e2e) cover --via %s", tt.dev, tt.via)
			}
			file := filepath.Join(dir, tt.via+".img")
			code, out, errs := run(t, "open", "--socket", socket, "--via", tt.via, file)
			if code == 0 || out != "" || errs != tt.want {
				t.Fatalf("exit %d, stdout %q, stderr %q; want %q", code, out, errs, tt.want)
			}
			if _, err := os.Stat(file); !os.IsNotExist(err) {
				t.Fatalf("a refused open created %s: %v", file, err)
			}
		})
	}
}

// TestOpenBackingDir: --backing-dir trusts a directory for the files a
// qcow2 overlay names (its backing file is read through it) and the
// disk's record shows it; --no-backing serves the overlay alone. (That the
// file is refused without --backing-dir is the formats' part: image.Names.)
func TestOpenBackingDir(t *testing.T) {
	socket, dir := inProcessDaemon(t)
	baseDir, topDir := filepath.Join(dir, "base"), filepath.Join(dir, "top")
	for _, d := range []string{baseDir, topDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	base := make([]byte, 1<<20)
	copy(base, "the backing file's first sector")
	if err := os.WriteFile(filepath.Join(baseDir, "base.img"), base, 0o600); err != nil {
		t.Fatal(err)
	}
	top := filepath.Join(topDir, "top.qcow2")
	mustRun(t, "create", "-f", "qcow2", top, "--size", "1M", "--backing", "../base/base.img", "--backing-format", "raw")

	code, _, errs := run(t, "open", "--socket", socket, top, "--no-backing", "--backing-dir", baseDir)
	if code == 0 || !strings.Contains(errs, "--backing-dir does not apply") {
		t.Fatalf("--no-backing with --backing-dir: exit %d, stderr %q", code, errs)
	}

	firstSector := func(d api.Disk) []byte {
		t.Helper()
		f, err := os.Open(d.Device)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		b := make([]byte, 512)
		if _, err := f.ReadAt(b, 0); err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tt := range []struct {
		name string
		args []string
		dirs []string
		want []byte
	}{
		{name: "backing-dir", args: []string{"--backing-dir", filepath.Join(topDir, "..", "base")}, dirs: []string{baseDir}, want: base[:512]},
		{name: "no-backing", args: []string{"--no-backing"}, want: make([]byte, 512)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var d api.Disk
			out := mustRun(t, append([]string{"open", "--socket", socket, top, "--json"}, tt.args...)...)
			if err := json.Unmarshal([]byte(out), &d); err != nil {
				t.Fatal(err)
			}
			defer mustRun(t, "close", "--socket", socket, d.ID)
			if !slices.Equal(d.BackingDirs, tt.dirs) || d.NoBacking != (tt.dirs == nil) {
				t.Fatalf("record: backing dirs %q, no backing %v; want %q", d.BackingDirs, d.NoBacking, tt.dirs)
			}
			if got := firstSector(d); !bytes.Equal(got, tt.want) {
				t.Fatalf("first sector %q, want %q", got[:40], tt.want[:40])
			}
		})
	}
}
