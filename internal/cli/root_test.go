package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// run runs the command line in-process and returns its exit status and output.
func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = Main(context.Background(), args, strings.NewReader(""), &o, &e)
	return code, o.String(), e.String()
}

func TestVersion(t *testing.T) {
	code, out, _ := run(t, "--version")
	if code != 0 || !strings.HasPrefix(out, "vdisk "+Version+" (commit ") {
		t.Fatalf("--version: code %d, output %q", code, out)
	}
}

func TestGenMan(t *testing.T) {
	dir := t.TempDir()
	if code, _, errs := run(t, "gen-man", dir); code != 0 {
		t.Fatalf("gen-man: %d %s", code, errs)
	}
	for _, page := range []string{"vdisk.1", "vdisk-open.1", "vdisk-serve.1", "vdisk-daemon.1"} {
		b, err := os.ReadFile(filepath.Join(dir, page))
		if err != nil || !bytes.Contains(b, []byte(".TH")) {
			t.Errorf("%s: %v", page, err)
		}
	}
}

func TestCompletion(t *testing.T) {
	for _, sh := range []string{"bash", "zsh", "fish", "powershell"} {
		code, out, errs := run(t, "completion", sh)
		if code != 0 || !strings.Contains(out, "vdisk") {
			t.Errorf("completion %s: code %d, stderr %q", sh, code, errs)
		}
	}
}

func TestUnknownCommand(t *testing.T) {
	code, _, errs := run(t, "frobnicate")
	if code == 0 || !strings.HasPrefix(errs, "vdisk: ") {
		t.Fatalf("unknown command: code %d, stderr %q", code, errs)
	}
}

func TestBadLogLevel(t *testing.T) {
	code, _, errs := run(t, "--log-level", "loud", "completion", "bash")
	if code == 0 || !strings.Contains(errs, "--log-level") {
		t.Fatalf("bad log level: code %d, stderr %q", code, errs)
	}
}
