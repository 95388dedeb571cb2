package image_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"vdisk/internal/image"
)

// TestLocalNames is the trust policy's table: what an image in dir may
// name, and what it may not.
func TestLocalNames(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "imgs")
	other := filepath.Join(root, "other")
	for _, d := range []string{dir, other, filepath.Join(dir, "sub")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(p string) {
		if err := os.WriteFile(p, []byte("data"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	top := filepath.Join(dir, "top.img")
	write(top)
	write(filepath.Join(dir, "base.img"))
	write(filepath.Join(dir, "sub", "deep.img"))
	write(filepath.Join(other, "secret.img"))
	must(t, os.Symlink(filepath.Join(other, "secret.img"), filepath.Join(dir, "out.img")))
	must(t, os.Symlink("base.img", filepath.Join(dir, "in.img")))
	must(t, syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o600))
	must(t, syscall.Mknod(filepath.Join(dir, "blk"), syscall.S_IFBLK|0o600, 7<<8))
	must(t, syscall.Mknod(filepath.Join(dir, "null"), syscall.S_IFCHR|0o600, 1<<8|3))
	must(t, os.Symlink(other, filepath.Join(dir, "otherdir")))

	from, err := image.OpenLocal(top, image.LocalOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer from.Close()

	for _, tc := range []struct {
		name string
		dirs []string
		ok   bool
		want string // in the error
	}{
		{name: "base.img", ok: true},
		{name: "./sub/deep.img", ok: true},
		{name: filepath.Join(dir, "base.img"), ok: true},
		{name: "in.img", ok: true},
		{name: "/etc/passwd", want: "outside " + dir},
		{name: "../../../../../../etc/passwd", want: "--backing-dir /etc"},
		{name: "../other/secret.img", want: "outside"},
		{name: "out.img", want: "outside"},
		{name: "otherdir/secret.img", want: "outside"},
		{name: "out.img", dirs: []string{other}, ok: true},
		{name: "../other/secret.img", dirs: []string{other}, ok: true},
		{name: "fifo", want: "FIFO"},
		{name: "blk", want: "block device"},
		{name: "null", want: "character device"},
		{name: "sub", want: "directory"},
		{name: "missing.img", want: "does not exist"},
		// Outside the trusted trees, a missing file is refused as
		// outside: the image learns nothing of what exists there.
		{name: "../other/missing.img", want: "outside"},
		{name: "/nonexistent/dir/x.img", want: "outside"},
		{name: "json:{\"file.filename\":\"/etc/shadow\"}", want: "json:"},
		{name: "nbd://127.0.0.1/x", want: "protocol"},
		{name: "", want: "empty"},
	} {
		f, err := image.LocalNames{Dirs: tc.dirs}.Open(from, tc.name, true)
		if tc.ok {
			if err != nil {
				t.Errorf("%q (dirs %v): %v", tc.name, tc.dirs, err)
				continue
			}
			f.Close()
			continue
		}
		if err == nil {
			f.Close()
			t.Errorf("%q (dirs %v) opened; want refused", tc.name, tc.dirs)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %q does not say %q", tc.name, err, tc.want)
		}
		if tc.want == "outside" && !errors.Is(err, image.ErrBackingRefused) {
			t.Errorf("%q: %v is not ErrBackingRefused", tc.name, err)
		}
	}
}

// TestOpenLocalRefusesSpecialFiles: the image a user names may be a file
// or a block device, never something an open could block on.
func TestOpenLocalRefusesSpecialFiles(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	must(t, syscall.Mkfifo(fifo, 0o600))
	for _, ro := range []bool{true, false} {
		if _, err := image.OpenLocal(fifo, image.LocalOptions{ReadOnly: ro}); err == nil || !strings.Contains(err.Error(), "FIFO") {
			t.Errorf("OpenLocal(fifo, ro=%v): %v, want a FIFO refusal", ro, err)
		}
	}
	if _, err := image.OpenLocal(dir, image.LocalOptions{ReadOnly: true}); err == nil {
		t.Error("OpenLocal(dir) succeeded")
	}
}

// TestCreateLocalMode: new image files are 0600 whatever the umask lets
// through.
func TestCreateLocalMode(t *testing.T) {
	p := filepath.Join(t.TempDir(), "new.img")
	f, err := image.CreateLocal(p)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
	if _, err := image.CreateLocal(p); !errors.Is(err, os.ErrExist) {
		t.Errorf("second create: %v, want ErrExist", err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// FuzzLocalNames: whatever name an image records, LocalNames opens
// nothing outside the trusted trees (here: the secret beside them).
func FuzzLocalNames(f *testing.F) {
	for _, s := range []string{"base.img", "../secret/s", "/etc/passwd", "link/s", "sub/../../secret/s", "./sub/deep.img",
		"sub/../base.img", "json:{}", "nbd:x", "//secret", "sub/./../link/s", "\x00", ".", ".."} {
		f.Add(s)
	}
	root := f.TempDir()
	dir := filepath.Join(root, "imgs")
	for _, d := range []string{filepath.Join(dir, "sub"), filepath.Join(root, "secret")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			f.Fatal(err)
		}
	}
	for _, p := range []string{filepath.Join(dir, "top.img"), filepath.Join(dir, "base.img"), filepath.Join(dir, "sub", "deep.img"), filepath.Join(root, "secret", "s")} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			f.Fatal(err)
		}
	}
	if err := os.Symlink("../secret", filepath.Join(dir, "link")); err != nil {
		f.Fatal(err)
	}
	var secret syscall.Stat_t
	if err := syscall.Stat(filepath.Join(root, "secret", "s"), &secret); err != nil {
		f.Fatal(err)
	}
	from, err := image.OpenLocal(filepath.Join(dir, "top.img"), image.LocalOptions{ReadOnly: true, NoLock: true})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { from.Close() })
	f.Fuzz(func(t *testing.T, name string) {
		g, err := image.LocalNames{NoLock: true}.Open(from, name, true)
		if err != nil {
			return
		}
		defer g.Close()
		var st syscall.Stat_t
		if err := syscall.Fstat(int(g.(*image.LocalFile).OS().Fd()), &st); err != nil {
			t.Fatal(err)
		}
		if st.Dev == secret.Dev && st.Ino == secret.Ino {
			t.Fatalf("%q opened the file outside the image's directory", name)
		}
	})
}

// TestFailedCreateRemovesExtents: a VMDK create that fails after making
// some of its extent files removes them too, and leaves alone a file it
// did not make.
func TestFailedCreateRemovesExtents(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "x.vmdk")
	theirs := filepath.Join(dir, "x-s002.vmdk")
	must(t, os.WriteFile(theirs, []byte("not ours"), 0o600))
	err := image.Create(img, image.CreateOptions{Format: "vmdk", Size: 3 << 30,
		Options: map[string]string{"subformat": "twoGbMaxExtentSparse"}})
	if err == nil {
		t.Fatal("create over an existing extent name succeeded")
	}
	left, _ := filepath.Glob(filepath.Join(dir, "*"))
	if len(left) != 1 || left[0] != theirs {
		t.Fatalf("after the failed create the directory holds %v, want only %s", left, theirs)
	}
	if b, _ := os.ReadFile(theirs); string(b) != "not ours" {
		t.Fatalf("the file the create did not make was changed: %q", b)
	}
}
