package qcow2

import (
	"bufio"
	"errors"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
	"vdisk/internal/image/imagetest"
)

// TestQemuLocking checks that vdisk and qemu see each other's opens
// through qemu's lock bytes.
func TestQemuLocking(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	imagetest.NeedTool(t, "qemu-io")
	p := filepath.Join(t.TempDir(), "img.qcow2")
	create(t, p, 1<<20, 0, nil, "", "")
	qemuFails := func(what string, args ...string) {
		t.Helper()
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "lock") {
			t.Errorf("%s while vdisk holds the image: %v\n%s", what, err, out)
		}
	}

	img, err := openPath(p, image.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	qemuFails("qemu-img check", "qemu-img", "check", p)
	qemuFails("qemu-io read", "qemu-io", "-c", "read 0 512", p)
	imagetest.Run(t, "qemu-img", "info", "-U", p) // sharing everything is allowed
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}

	ro, err := openPath(p, image.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	imagetest.Run(t, "qemu-img", "check", p)
	qemuFails("qemu-io write", "qemu-io", "-c", "write 0 512", p)
	ro.Close()

	// qemu-io holds the image open for writing until told to quit.
	cmd := exec.Command("qemu-io", p)
	in, _ := cmd.StdinPipe()
	outp, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer in.Close()
	io.WriteString(in, "read 0 512\n")
	sc := bufio.NewScanner(outp)
	for sc.Scan() && !strings.Contains(sc.Text(), "read 512/512") {
	}
	for _, ro := range []bool{false, true} {
		if img, err := openPath(p, image.OpenOptions{ReadOnly: ro}); !errors.Is(err, blockdev.ErrLocked) {
			if err == nil {
				img.Close()
			}
			t.Errorf("open (read-only %v) while qemu-io writes: %v, want ErrLocked", ro, err)
		}
	}
	if _, err := checkPath(p, image.CheckOptions{}); !errors.Is(err, blockdev.ErrLocked) {
		t.Errorf("check while qemu-io writes: %v, want ErrLocked", err)
	}
	io.WriteString(in, "quit\n")
}
