package cli

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// qemuIn runs a qemu tool in dir and fails the test on error.
func qemuIn(t *testing.T, dir, tool string, args ...string) string {
	t.Helper()
	cmd := exec.Command(tool, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", tool, args, err, out)
	}
	return string(out)
}

// inDir runs the command line with dir as the working directory.
func inDir(t *testing.T, dir string, args ...string) (int, string, string) {
	t.Helper()
	t.Chdir(dir)
	return run(t, args...)
}

// chain makes base.qcow2 ← top.qcow2 in dir, each with data.
func chain(t *testing.T, dir string) {
	t.Helper()
	qemuIn(t, dir, "qemu-img", "create", "-q", "-f", "qcow2", "base.qcow2", "4M")
	qemuIn(t, dir, "qemu-io", "-c", "write -P 0x11 0 2M", "base.qcow2")
	qemuIn(t, dir, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2")
	qemuIn(t, dir, "qemu-io", "-c", "write -P 0x22 1M 2M", "-c", "write -z 0 64k", "top.qcow2")
}

func TestCommit(t *testing.T) {
	needTools(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	chain(t, dir)
	want := filepath.Join(dir, "want.raw")
	qemuIn(t, dir, "qemu-img", "convert", "-O", "raw", "top.qcow2", want)
	code, out, errs := inDir(t, dir, "commit", "-q", "top.qcow2")
	if code != 0 || out != "" {
		t.Fatalf("commit -q: exit %d, %q %q", code, out, errs)
	}
	qemuIn(t, dir, "qemu-img", "compare", "-F", "raw", "base.qcow2", want)
	qemuIn(t, dir, "qemu-img", "compare", "-F", "raw", "top.qcow2", want)
	if m := qemuIn(t, dir, "qemu-img", "map", "--output=json", "top.qcow2"); strings.Contains(m, `"depth": 0`) {
		t.Fatalf("top not emptied:\n%s", m)
	}
	// No backing file left to commit into.
	code, _, errs = inDir(t, dir, "commit", "base.qcow2")
	if code != 1 || errs != "vdisk: Image does not have a backing file\n" {
		t.Fatalf("commit of a base: exit %d, %q", code, errs)
	}
}

func TestRebase(t *testing.T) {
	needTools(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	chain(t, dir)
	want := filepath.Join(dir, "want.raw")
	qemuIn(t, dir, "qemu-img", "convert", "-O", "raw", "top.qcow2", want)
	code, out, errs := inDir(t, dir, "rebase", "-b", "", "top.qcow2")
	if code != 0 || out != "" {
		t.Fatalf("rebase -b '': exit %d, %q %q", code, out, errs)
	}
	qemuIn(t, dir, "qemu-img", "compare", "-F", "raw", "top.qcow2", want)
	if info := qemuIn(t, dir, "qemu-img", "info", "top.qcow2"); strings.Contains(info, "backing file") {
		t.Fatalf("backing file left:\n%s", info)
	}
	code, _, _ = inDir(t, dir, "rebase", "-u", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2")
	if code != 0 {
		t.Fatalf("rebase -u: exit %d", code)
	}
	if info := qemuIn(t, dir, "qemu-img", "info", "top.qcow2"); !strings.Contains(info, "backing file: base.qcow2\nbacking file format: qcow2") {
		t.Fatalf("after rebase -u:\n%s", info)
	}
	code, _, errs = inDir(t, dir, "rebase", "top.qcow2")
	if code != 1 || errs != "vdisk: Must specify backing file (-b) or use unsafe mode (-u)\n" {
		t.Fatalf("rebase without -b: exit %d, %q", code, errs)
	}
}

// The base of a commit is a backing file like any other: outside the
// top's directory it is refused unless --backing-dir trusts its
// directory, and then it is written.
func TestCommitBackingDir(t *testing.T) {
	needTools(t, "qemu-img", "qemu-io")
	bdir, tdir := t.TempDir(), t.TempDir()
	base := filepath.Join(bdir, "base.qcow2")
	qemuIn(t, bdir, "qemu-img", "create", "-q", "-f", "qcow2", base, "1M")
	qemuIn(t, tdir, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", "top.qcow2")
	qemuIn(t, tdir, "qemu-io", "-c", "write -P 0x33 0 64k", "top.qcow2")
	code, _, errs := inDir(t, tdir, "commit", "top.qcow2")
	if code == 0 || !strings.Contains(errs, "--backing-dir") {
		t.Fatalf("commit into a base outside the trusted trees: exit %d, %q", code, errs)
	}
	if out := qemuIn(t, bdir, "qemu-io", "-c", "read -P 0 0 64k", base); !strings.Contains(out, "read 65536/65536") {
		t.Fatalf("the refused commit wrote the base: %s", out)
	}
	code, _, errs = inDir(t, tdir, "commit", "--backing-dir", bdir, "top.qcow2")
	if code != 0 {
		t.Fatalf("commit --backing-dir: exit %d, %q", code, errs)
	}
	if out := qemuIn(t, bdir, "qemu-io", "-c", "read -P 0x33 0 64k", base); !strings.Contains(out, "read 65536/65536") {
		t.Fatalf("the base after commit: %s", out)
	}
}
