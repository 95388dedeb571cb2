package qcow2

import (
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"vdisk/internal/image"
	"vdisk/internal/image/imagetest"
)

// SetBacking changes, adds and removes the backing file and its format
// as qemu-img rebase -u does: qemu-img info reads the same, qemu-img
// check is clean, and other extensions (the feature table) survive.
func TestSetBackingLikeQemu(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	steps := []struct{ name, format string }{
		{"b.qcow2", "qcow2"},
		{"a-much-longer-name-for-the-backing-file.raw", "raw"},
		{"", ""},
		{"b.qcow2", "qcow2"},
	}
	for _, compat := range []string{"1.1", "0.10"} {
		t.Run(compat, func(t *testing.T) {
			dir := t.TempDir()
			imagetest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", filepath.Join(dir, "b.qcow2"), "1M")
			imagetest.Run(t, "qemu-img", "create", "-q", "-f", "raw", filepath.Join(dir, "a-much-longer-name-for-the-backing-file.raw"), "1M")
			mine, theirs := filepath.Join(dir, "mine.qcow2"), filepath.Join(dir, "theirs.qcow2")
			for _, p := range []string{mine, theirs} {
				imagetest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat="+compat, "-b", "b.qcow2", "-F", "qcow2", p, "1M")
			}
			for _, s := range steps {
				img := openImage(t, mine, image.OpenOptions{NoBacking: true})
				if err := img.SetBacking(s.name, s.format); err != nil {
					t.Fatal(err)
				}
				if err := img.Close(); err != nil {
					t.Fatal(err)
				}
				args := []string{"rebase", "-u", "-b", s.name}
				if s.format != "" {
					args = append(args, "-F", s.format)
				}
				imagetest.Run(t, "qemu-img", append(args, theirs)...)
				qemuCheck(t, mine)
				if got, want := infoLines(t, mine), infoLines(t, theirs); got != want {
					t.Fatalf("after %v: vdisk's\n%s\nqemu-img's\n%s", s, got, want)
				}
				f, err := infoPath(mine)
				if err != nil {
					t.Fatal(err)
				}
				if f.BackingFile != s.name || f.BackingFormat != s.format {
					t.Fatalf("info: backing %q (%q), want %q (%q)", f.BackingFile, f.BackingFormat, s.name, s.format)
				}
			}
		})
	}
}

// infoLines is qemu-img info's report without the lines that name the
// file or its size on disk.
func infoLines(t *testing.T, p string) string {
	t.Helper()
	out, err := exec.Command("qemu-img", "info", "-U", p).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img info: %v\n%s", err, out)
	}
	var keep []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "image:") || strings.HasPrefix(l, "disk size:") {
			continue
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n")
}

// A name that does not fit in the first cluster is refused with ENOSPC,
// and the header stays as it was.
func TestSetBackingFull(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "s.qcow2")
	create(t, p, 1<<20, 512, nil, "", "")
	img := openImage(t, p, image.OpenOptions{})
	err := img.SetBacking(strings.Repeat("n", 600), "qcow2")
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("a 600-byte name in a 512-byte cluster: %v", err)
	}
	if err := img.SetBacking("", "qcow2"); err == nil {
		t.Fatal("a format without a name was accepted")
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := infoPath(p)
	if err != nil || f.BackingFile != "" {
		t.Fatalf("after refusals: %+v, %v", f, err)
	}
}
