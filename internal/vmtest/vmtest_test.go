package vmtest

import (
	"bytes"
	"context"
	"debug/elf"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStatusError(t *testing.T) {
	tests := []struct {
		name string
		code int
		want string // substring of the error; "" means nil
	}{
		{name: "pass", code: 0},
		{name: "script failure", code: 1, want: "exit status 1"},
		{name: "timeout", code: 124, want: "timed out"},
		{name: "no report", code: 125, want: "never reported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := statusError(tt.code)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("statusError(%d) = %v, want nil", tt.code, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("statusError(%d) = %v, want an error containing %q", tt.code, err, tt.want)
			}
		})
	}
}

// fakeVM writes stand-ins for prepare.sh and run.sh into a directory.
func fakeVM(t *testing.T, runScript string) *env {
	t.Helper()
	dir := t.TempDir()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write("prepare.sh", "echo UBLK=0 >\"$1/vm.env\"\n")
	write("run.sh", runScript)
	return &env{cache: t.TempDir(), vmDir: dir, root: "."}
}

func TestRunGuestStatus(t *testing.T) {
	tests := []struct {
		name   string
		script string
		want   int
	}{
		{name: "pass", script: `test -f "$2/test.sh" && echo console-line && exit 0; exit 3`, want: 0},
		{name: "timeout", script: "exit 124", want: 124},
		{name: "no report", script: "exit 125", want: 125},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := fakeVM(t, tt.script)
			share := t.TempDir()
			if err := os.WriteFile(filepath.Join(share, "test.sh"), nil, 0o755); err != nil {
				t.Fatal(err)
			}
			var console bytes.Buffer
			code, err := e.runGuest(context.Background(), share, 10*time.Second, nil, &console)
			if err != nil || code != tt.want {
				t.Fatalf("runGuest = %d, %v; want %d", code, err, tt.want)
			}
			if tt.want == 0 && !strings.Contains(console.String(), "console-line") {
				t.Fatalf("console not captured: %q", console.String())
			}
		})
	}
}

// TestRunGuestCancel checks that cancelling sends SIGTERM, which run.sh
// traps to clean up, and that the caller gets an error, not a hang.
func TestRunGuestCancel(t *testing.T) {
	dir := t.TempDir()
	ready, marker := filepath.Join(dir, "ready"), filepath.Join(dir, "terminated")
	e := fakeVM(t, "trap 'echo term >"+marker+"; exit 143' TERM\n: >"+ready+"\nwhile :; do sleep 0.1; done\n")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { // cancel once the trap is installed
		for {
			if _, err := os.Stat(ready); err == nil {
				cancel()
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	var console bytes.Buffer
	code, err := e.runGuest(ctx, t.TempDir(), 60*time.Second, nil, &console)
	if err == nil && code == 0 {
		t.Fatal("runGuest cancelled returned success")
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("run.sh did not get SIGTERM: %v", err)
	}
}

func TestPrepareSkipsWithoutUblk(t *testing.T) {
	e := fakeVM(t, "exit 0")
	var skipped bool
	t.Run("inner", func(t *testing.T) {
		defer func() { skipped = t.Skipped() }()
		e.prepare(t, true)
	})
	if !skipped {
		t.Fatal("prepare with UBLK=0 did not skip")
	}
}

// TestRunPlumbing drives Run against stand-in scripts (VMTEST_DIR): the
// binary is built statically into the share, the files and test.sh are
// there, run.sh gets the cache, the share and a timeout, and the share
// comes back with what "the guest" wrote.
func TestRunPlumbing(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("Run skips unless root")
	}
	vm := t.TempDir()
	cache := filepath.Join(t.TempDir(), "cache")
	scripts := map[string]string{
		"prepare.sh": "mkdir -p \"$1\" && echo UBLK=1 >\"$1/vm.env\" && : >\"$1/stamp\"\n",
		// The stand-in guest: run the binary, check the files, answer.
		"run.sh": `[ "$1" = "` + cache + `" ] || exit 3
[ "$3" -gt 0 ] || exit 4
cd "$2" && [ -x test.sh ] && [ "$(cat data.txt)" = payload ] || exit 5
./hello >out.txt && sh test.sh
`,
	}
	for name, body := range scripts {
		if err := os.WriteFile(filepath.Join(vm, name), []byte("#!/bin/sh\n"+body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("VMTEST_DIR", vm)
	t.Setenv("VMTEST_CACHE", cache)
	share := Run(t, Config{
		Script:   "echo done >result.txt\n",
		Binaries: map[string]Binary{"hello": {Pkg: "vdisk/internal/vmtest/testdata/hello"}},
		Files:    map[string][]byte{"data.txt": []byte("payload")},
		NeedUblk: true,
		Timeout:  time.Minute,
	})
	f, err := elf.Open(filepath.Join(share, "hello"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the built binary is dynamically linked")
		}
	}
	for name, want := range map[string]string{"out.txt": "hello from the guest\n", "result.txt": "done\n"} {
		b, err := os.ReadFile(filepath.Join(share, name))
		if err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", name, b, err, want)
		}
	}
}

// TestRunRebootsAfterBootFailure has a stand-in guest die before test.sh
// starts on its first boot (status 125, no start line), then run test.sh:
// Run boots again and passes. A guest that dies after test.sh started is
// not booted again.
func TestRunRebootsAfterBootFailure(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("Run skips unless root")
	}
	vm := t.TempDir()
	cache := filepath.Join(t.TempDir(), "cache")
	count := filepath.Join(t.TempDir(), "boots")
	scripts := map[string]string{
		"prepare.sh": "mkdir -p \"$1\" && echo UBLK=0 >\"$1/vm.env\" && : >\"$1/stamp\"\n",
		"run.sh": `echo x >>` + count + `
[ "$(wc -l <` + count + `)" -ge 2 ] || { echo "Oops: int3"; exit 125; }
echo "vmtest: guest up, running /share/test.sh"; cd "$2" && sh test.sh
`,
	}
	for name, body := range scripts {
		if err := os.WriteFile(filepath.Join(vm, name), []byte("#!/bin/sh\n"+body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("VMTEST_DIR", vm)
	t.Setenv("VMTEST_CACHE", cache)
	Run(t, Config{Script: "exit 0\n", Timeout: time.Minute})
	if b, _ := os.ReadFile(count); strings.Count(string(b), "x") != 2 {
		t.Fatalf("boots: %q, want 2", b)
	}
}
