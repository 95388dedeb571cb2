package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"vdisk/internal/image/imagetest"
	"vdisk/internal/nbd/nbdtest"
)

// qemuTools are the qemu-img builds the commit and rebase tests compare
// against: the system's, and qemu 10.
func qemuTools(t *testing.T) map[string]string {
	imagetest.NeedTool(t, "qemu-img")
	imagetest.NeedTool(t, "qemu-io")
	return map[string]string{"system": "", "qemu10": nbdtest.Qemu10(t) + "/"}
}

// The scripts below build images in the current directory: {q} is the
// directory of qemu-img and qemu-io ("" for the system's), {bf} the base's
// format.

// three is a qcow2 chain base ← mid ← top whose layers overlap, with
// data, zero clusters and compressed clusters in top.
const three = `
{q}qemu-img create -q -f {bf} base.{bf} 8M
{q}qemu-io -f {bf} -c 'write -P 0x11 0 4M' -c 'write -P 0x12 6M 1M' base.{bf}
{q}qemu-img create -q -f qcow2 -b base.{bf} -F {bf} mid.qcow2
{q}qemu-io -c 'write -P 0x21 1M 2M' -c 'write -z 5M 64k' mid.qcow2
{q}qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
{q}qemu-io -c 'write -P 0x31 512k 1M' -c 'write -z 2M 256k' -c 'write -c -P 0x32 4M 64k' -c 'write -P 0x33 7M 12k' -c 'write -z 6M 128k' top.qcow2
`

// withSnapshot gives top an internal snapshot before more writes.
const withSnapshot = three + `
{q}qemu-img snapshot -c snap1 top.qcow2
{q}qemu-io -c 'write -P 0x34 512k 64k' -c 'write -z 7M 4k' top.qcow2
`

// two is base ← top, base of any writable format.
const two = `
{q}qemu-img create -q -f {bf} base.{bf} 8M
{q}qemu-io -f {bf} -c 'write -P 0x11 0 3M' -c 'write -P 0x12 5M 1M' base.{bf}
{q}qemu-img create -q -f qcow2 -b base.{bf} -F {bf} top.qcow2
{q}qemu-io -c 'write -P 0x31 1M 1M' -c 'write -z 2M 192k' -c 'write -c -P 0x32 6M 64k' -c 'write -P 0x33 7M 4k' top.qcow2
`

// build runs script in dir with q and the base format bf.
func build(t *testing.T, dir, script, q, bf string) {
	t.Helper()
	s := strings.NewReplacer("{q}", q, "{bf}", bf).Replace(script)
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", s)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", s, err, out)
	}
}

// cloneDir copies the files of src into a new directory.
func cloneDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	if out, err := exec.Command("cp", "-a", "--sparse=always", src+"/.", dst+"/").CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	return dst
}

// qemu runs a qemu tool (q its directory) in dir and returns its output
// and exit status.
func qemu(t *testing.T, dir, q, tool string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(q+tool, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s %v: %v", tool, args, err)
	}
	return string(out), 0
}

// vdiskIn runs vdisk in dir.
func vdiskIn(t *testing.T, dir string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	} else if err != nil {
		t.Fatalf("vdisk %v: %v", args, err)
	}
	return string(out), 0
}

// sameImages checks that each image reads the same in a and b (with
// its chain), and that every one in a passes qemu-img check.
func sameImages(t *testing.T, q, a, b string, images ...string) {
	t.Helper()
	for _, im := range images {
		if out, code := qemu(t, a, q, "qemu-img", "compare", filepath.Join(a, im), filepath.Join(b, im)); code != 0 {
			t.Errorf("%s: vdisk's and qemu-img's differ (exit %d): %s", im, code, out)
		}
		if strings.HasSuffix(im, ".qcow2") || strings.HasSuffix(im, ".vhdx") || strings.HasSuffix(im, ".vdi") || strings.HasSuffix(im, ".vmdk") {
			if out, code := qemu(t, a, q, "qemu-img", "check", im); code != 0 {
				t.Errorf("qemu-img check %s: exit %d\n%s", im, code, out)
			}
		}
	}
}

// topLayerEmpty reports whether no run of dir/top is held by top itself.
func topLayerEmpty(t *testing.T, q, dir, top string) bool {
	t.Helper()
	out, code := qemu(t, dir, q, "qemu-img", "map", "--output=json", top)
	if code != 0 {
		t.Fatalf("qemu-img map %s: %s", top, out)
	}
	var m []struct {
		Depth int `json:"depth"`
	}
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("map: %v\n%s", err, out)
	}
	for _, e := range m {
		if e.Depth == 0 {
			return false
		}
	}
	return true
}

// TestCommitLikeQemu runs vdisk commit on one copy of a chain and
// qemu-img commit on another: every image reads the same afterwards and
// passes qemu-img check.
func TestCommitLikeQemu(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	cases := []struct {
		name, script, bf string
		args             []string
		images           []string
		emptied          bool
	}{
		{"chain of 3, into mid", three, "qcow2", nil, []string{"base.qcow2", "mid.qcow2", "top.qcow2"}, true},
		{"chain of 3, -d", three, "qcow2", []string{"-d"}, []string{"base.qcow2", "mid.qcow2", "top.qcow2"}, false},
		{"chain of 3, -b base", three, "qcow2", []string{"-b", "base.qcow2"}, []string{"base.qcow2", "top.qcow2"}, false},
		{"snapshots in top", withSnapshot, "qcow2", nil, []string{"base.qcow2", "mid.qcow2", "top.qcow2"}, true},
		{"raw base", two, "raw", nil, []string{"base.raw", "top.qcow2"}, true},
		{"vhdx base", two, "vhdx", nil, []string{"base.vhdx", "top.qcow2"}, true},
		{"vmdk base", two, "vmdk", nil, []string{"base.vmdk", "top.qcow2"}, true},
		{"vdi base", two, "vdi", nil, []string{"base.vdi", "top.qcow2"}, true},
		{"vpc base", two, "vpc", nil, []string{"base.vpc", "top.qcow2"}, true},
	}
	for qname, q := range qemuTools(t) {
		for _, c := range cases {
			t.Run(qname+"/"+c.name, func(t *testing.T) {
				a := t.TempDir()
				build(t, a, c.script, q, c.bf)
				b := cloneDir(t, a)
				args := append(append([]string{"commit"}, c.args...), "top.qcow2")
				out, code := vdiskIn(t, a, args...)
				if code != 0 || out != "Image committed.\n" {
					t.Fatalf("vdisk %v: exit %d: %q", args, code, out)
				}
				if out, code := qemu(t, b, q, "qemu-img", args...); code != 0 {
					t.Fatalf("qemu-img %v: exit %d: %s", args, code, out)
				}
				sameImages(t, q, a, b, c.images...)
				if got, want := topLayerEmpty(t, q, a, "top.qcow2"), topLayerEmpty(t, q, b, "top.qcow2"); got != want || got != c.emptied {
					t.Errorf("top emptied: vdisk %v, qemu-img %v, want %v", got, want, c.emptied)
				}
			})
		}
	}
}

// TestCommitErrorsLikeQemu checks the messages and exit codes of the
// commit and rebase errors qemu-img reports.
func TestCommitErrorsLikeQemu(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	imagetest.NeedTool(t, "qemu-img")
	dir := t.TempDir()
	build(t, dir, two, "", "qcow2")
	for _, c := range []struct {
		args []string
		// whole: the message is qemu-img's to the end; else up to the
		// cause, which vdisk words its own way.
		whole bool
	}{
		{[]string{"commit", "base.qcow2"}, true},
		{[]string{"commit", "-b", "nope.qcow2", "top.qcow2"}, true},
		{[]string{"commit", "top.qcow2", "extra"}, true},
		{[]string{"rebase", "top.qcow2"}, true},
		{[]string{"rebase", "-b", "base.qcow2", "top.qcow2"}, true},
		{[]string{"rebase", "-b", "base.qcow2", "-F", "bogus", "top.qcow2"}, true},
		{[]string{"rebase", "-b", "missing.qcow2", "-F", "qcow2", "top.qcow2"}, false},
	} {
		qout, qcode := qemu(t, dir, "", "qemu-img", c.args...)
		vout, vcode := vdiskIn(t, dir, c.args...)
		qmsg, _, _ := strings.Cut(strings.TrimPrefix(qout, "qemu-img: "), "\n")
		if !c.whole {
			i := strings.Index(qmsg, "': ")
			qmsg = qmsg[:i+3]
		}
		if vcode != qcode || !strings.HasPrefix(vout, "vdisk: "+qmsg) {
			t.Errorf("%v: vdisk exit %d %q, qemu-img exit %d %q", c.args, vcode, vout, qcode, qout)
		}
	}
}

// TestRebaseLikeQemu runs vdisk rebase and qemu-img rebase on copies of
// the same images: the tops read the same, pass qemu-img check, and
// record the same backing file and format.
func TestRebaseLikeQemu(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	other := `
{q}qemu-img create -q -f vmdk other.vmdk 8M
{q}qemu-io -f vmdk -c 'write -P 0x11 0 1M' -c 'write -P 0x44 3M 2M' other.vmdk
`
	cases := []struct {
		name, script string
		args         []string
	}{
		{"onto base (safe)", three, []string{"-b", "base.qcow2", "-F", "qcow2"}},
		{"onto base (-u)", three, []string{"-u", "-b", "base.qcow2", "-F", "qcow2"}},
		{"no backing", three, []string{"-b", ""}},
		{"no backing (-u)", three, []string{"-u", "-b", ""}},
		{"onto another format", three + other, []string{"-b", "other.vmdk", "-F", "vmdk"}},
		{"snapshots, onto base", withSnapshot, []string{"-b", "base.qcow2", "-F", "qcow2"}},
		{"same backing", three, []string{"-b", "mid.qcow2", "-F", "qcow2"}},
	}
	for qname, q := range qemuTools(t) {
		for _, c := range cases {
			t.Run(qname+"/"+c.name, func(t *testing.T) {
				a := t.TempDir()
				build(t, a, c.script, q, "qcow2")
				b := cloneDir(t, a)
				ref := cloneDir(t, a)
				args := append(append([]string{"rebase"}, c.args...), "top.qcow2")
				if out, code := vdiskIn(t, a, args...); code != 0 || out != "" {
					t.Fatalf("vdisk %v: exit %d: %q", args, code, out)
				}
				if out, code := qemu(t, b, q, "qemu-img", args...); code != 0 {
					t.Fatalf("qemu-img %v: exit %d: %s", args, code, out)
				}
				sameImages(t, q, a, b, "top.qcow2")
				if c.args[0] != "-u" {
					// Safe mode: the top reads as it did.
					sameImages(t, q, a, ref, "top.qcow2")
				}
				if got, want := backingOf(t, q, a), backingOf(t, q, b); got != want {
					t.Errorf("backing: vdisk's %s, qemu-img's %s", got, want)
				}
			})
		}
	}
}

// backingOf is what qemu-img info says of dir/top.qcow2's backing file.
func backingOf(t *testing.T, q, dir string) string {
	t.Helper()
	out, code := qemu(t, dir, q, "qemu-img", "info", "--output=json", "top.qcow2")
	if code != 0 {
		t.Fatalf("info: %s", out)
	}
	var info struct {
		Backing string `json:"backing-filename"`
		Format  string `json:"backing-filename-format"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatal(err)
	}
	return info.Backing + " (" + info.Format + ")"
}

// TestCommitCrash kills vdisk commit with SIGKILL at random points of its
// progress, and once right after the copy (while the base is flushed and
// the top emptied): every time, the base passes qemu-img check (leaked clusters
// allowed, exit 3), each of its 4 KiB blocks holds the old bytes or the
// new ones, and the top reads as it did. A commit run again then
// finishes.
func TestCommitCrash(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	imagetest.NeedTool(t, "qemu-img")
	imagetest.NeedTool(t, "qemu-io")
	const size = 256 << 20
	ref := t.TempDir()
	build(t, ref, fmt.Sprintf(`
qemu-img create -q -f qcow2 base.qcow2 %[1]d
qemu-io -c 'write -P 0x61 0 %[1]d' base.qcow2
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
qemu-io -c 'write -P 0x62 0 %[1]d' top.qcow2
`, size), "", "")
	for round := range 6 {
		dir := cloneDir(t, ref)
		// Kill at the kills-th progress update. In odd rounds the test
		// stops reading there: the progress output fills the pipe (4 KiB,
		// a few dozen updates of the 128 the copy makes), and the commit
		// stalls mid-way whatever the machine's speed. In even rounds it
		// keeps reading, and the kill lands wherever the commit is then.
		// The last round kills after the copy, while the base is flushed
		// and the top emptied.
		kills, delim, stall := 1+rand.IntN(60), byte('\r'), round%2 == 1
		if round == 5 {
			kills, delim, stall = 1, '\n', false
		}
		pr, pw, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := unix.FcntlInt(pw.Fd(), unix.F_SETPIPE_SZ, 4096); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "commit", "-p", "top.qcow2")
		cmd.Dir = dir
		cmd.Stderr = pw
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		pw.Close()
		r := bufio.NewReader(pr)
		seen := 0
		for seen < kills {
			if _, err := r.ReadString(delim); err != nil {
				break // finished before
			}
			seen++
		}
		if !stall {
			go func() { _, _ = r.WriteTo(io.Discard) }()
		}
		cmd.Process.Signal(syscall.SIGKILL)
		werr := cmd.Wait()
		pr.Close()
		t.Logf("round %d: killed after %d progress updates, stall %v (%v)", round, seen, stall, werr)

		out, code := qemu(t, dir, "", "qemu-img", "check", "base.qcow2")
		if code != 0 && code != 3 {
			t.Fatalf("round %d: base: qemu-img check exit %d\n%s", round, code, out)
		}
		t.Logf("round %d: qemu-img check of the base: exit %d", round, code)
		raw := filepath.Join(dir, "base.raw")
		if out, code := qemu(t, dir, "", "qemu-img", "convert", "-O", "raw", "base.qcow2", raw); code != 0 {
			t.Fatalf("convert: %s", out)
		}
		b, err := os.ReadFile(raw)
		if err != nil {
			t.Fatal(err)
		}
		news := 0
		for off := 0; off < len(b); off += 4096 {
			blk := b[off : off+4096]
			switch {
			case bytes.Count(blk, []byte{0x61}) == len(blk):
			case bytes.Count(blk, []byte{0x62}) == len(blk):
				news++
			default:
				t.Fatalf("round %d: base block at %d holds neither the old nor the new bytes", round, off)
			}
		}
		os.Remove(raw)
		t.Logf("round %d: %d of %d blocks committed", round, news, len(b)/4096)
		if out, code := qemu(t, dir, "", "qemu-img", "check", "top.qcow2"); code != 0 && code != 3 {
			t.Fatalf("round %d: top: qemu-img check exit %d\n%s", round, code, out)
		}
		if out, code := qemu(t, dir, "", "qemu-img", "compare", "top.qcow2", filepath.Join(ref, "top.qcow2")); code != 0 {
			t.Fatalf("round %d: top reads differently after the kill: %s", round, out)
		}
		if out, code := vdiskIn(t, dir, "commit", "top.qcow2"); code != 0 {
			t.Fatalf("round %d: commit again: exit %d: %s", round, code, out)
		}
		if out, code := qemu(t, dir, "", "qemu-img", "compare", "base.qcow2", filepath.Join(ref, "top.qcow2")); code != 0 {
			t.Fatalf("round %d: the base after a second commit: %s", round, out)
		}
	}
}
