package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCloseTargets(t *testing.T) {
	socket, dir := inProcessDaemon(t)
	file := filepath.Join(dir, "c.img")
	if err := os.Symlink(file, filepath.Join(dir, "link.img")); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	open := func() (dev, id string) {
		f := strings.Fields(mustRun(t, "open", "--socket", socket, file, "--size", "4M"))
		return f[0], f[1]
	}
	dev, id := open()
	tests := []struct{ name, arg string }{
		{name: "device", arg: dev},
		{name: "id", arg: id},
		{name: "file", arg: file},
		{name: "relative file", arg: "c.img"},
		{name: "symlink", arg: "link.img"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if i > 0 {
				open()
			}
			mustRun(t, "close", "--socket", socket, tt.arg)
			if out := mustRun(t, "list", "--socket", socket); strings.Count(out, "\n") != 1 {
				t.Fatalf("still listed after close %s:\n%s", tt.arg, out)
			}
		})
	}
}

func TestCloseAll(t *testing.T) {
	socket, dir := inProcessDaemon(t)
	for _, n := range []string{"a.img", "b.img", "c.img"} {
		mustRun(t, "open", "--socket", socket, filepath.Join(dir, n), "--size", "2M")
	}
	if out := mustRun(t, "list", "--socket", socket); strings.Count(out, "\n") != 4 {
		t.Fatalf("list:\n%s", out)
	}
	mustRun(t, "close", "--socket", socket, "--all")
	if out := mustRun(t, "list", "--socket", socket); strings.Count(out, "\n") != 1 {
		t.Fatalf("list after close --all:\n%s", out)
	}
}

func TestCloseErrors(t *testing.T) {
	socket, dir := inProcessDaemon(t)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "unknown id", args: []string{"close", "0123456789ab"}, want: "vdisk: unknown disk id 0123456789ab: no open disk has it (see vdisk list)\n"},
		{name: "not open", args: []string{"close", filepath.Join(dir, "none.img")}, want: "vdisk: " + filepath.Join(dir, "none.img") + " is not an open disk's file, id or device (see vdisk list)\n"},
		{name: "no argument", args: []string{"close"}, want: "give one FILE, ID or DEVICE (or --all)"},
		{name: "argument and all", args: []string{"close", "x", "--all"}, want: "not both"},
		{name: "info unknown id", args: []string{"info", "0123456789ab"}, want: "unknown disk id 0123456789ab"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, errs := run(t, append(tt.args, "--socket", socket)...)
			if code == 0 || !strings.Contains(errs, tt.want) || strings.Count(errs, "\n") != 1 {
				t.Fatalf("exit %d, stderr %q; want one line with %q", code, errs, tt.want)
			}
		})
	}
}
