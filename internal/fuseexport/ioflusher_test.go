package fuseexport

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// capSysResource is CAP_SYS_RESOURCE's bit in /proc/self/status CapEff.
const capSysResource = 24

// hasCapSysResource reports whether the process may set PR_SET_IO_FLUSHER.
func hasCapSysResource(t *testing.T) bool {
	t.Helper()
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(status)) {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatalf("parse CapEff %q: %v", v, err)
			}
			return caps&(1<<capSysResource) != 0
		}
	}
	t.Fatal("no CapEff in /proc/self/status")
	return false
}

func TestSetIOFlusherInProcess(t *testing.T) {
	err := SetIOFlusher()
	if errors.Is(err, errors.ErrUnsupported) {
		return // a cgo test binary: the no-cgo binary below covers it
	}
	if !hasCapSysResource(t) {
		if !errors.Is(err, syscall.EPERM) {
			t.Fatalf("SetIOFlusher without CAP_SYS_RESOURCE = %v, want EPERM", err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	on, err := IsIOFlusher()
	if err != nil || !on {
		t.Fatalf("IsIOFlusher() = %v, %v after SetIOFlusher", on, err)
	}
}

func TestSetIOFlusherEveryThread(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not in PATH to build the no-cgo helper")
	}
	bin := filepath.Join(t.TempDir(), "ioflusher")
	build := exec.Command(goBin, "build", "-o", bin, "./testdata/ioflusher")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the helper: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).CombinedOutput()
	if !hasCapSysResource(t) {
		// The call must fail and say why; the success path needs a host
		// that grants CAP_SYS_RESOURCE.
		if err == nil || !strings.Contains(string(out), syscall.EPERM.Error()) {
			t.Fatalf("helper without CAP_SYS_RESOURCE: %v\n%s; want EPERM", err, out)
		}
		t.Skip("this process lacks CAP_SYS_RESOURCE, which PR_SET_IO_FLUSHER needs: only the refusal was checked")
	}
	if err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Fatalf("helper: %v\n%s", err, out)
	}
}
