package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"vdisk/internal/image/imagetest"
	"vdisk/internal/storage/objstore/s3/s3test"
)

// s3Formats are the formats whose files live in an object store's chunks,
// with qemu's name for each (for qemu-img check of the stored file).
var s3Formats = []struct{ name, qemu string }{
	{"raw", "raw"}, {"qcow2", "qcow2"}, {"vhd", "vpc"}, {"vhdx", "vhdx"}, {"vmdk", "vmdk"}, {"vdi", "vdi"},
}

// serveS3 starts `vdisk serve` on url and returns the NBD URI and a stop
// function that ends it with SIGTERM (every acknowledged write stored).
func serveS3(t *testing.T, srv *s3test.Server, args ...string) (uri string, stop func()) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	cmd := exec.Command(bin, append([]string{"serve", "--unix", sock}, args...)...)
	s3Env(srv)(cmd)
	cmd.Env = append(os.Environ(), cmd.Env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("vdisk serve %v: %v: %s", args, err, stderr.String())
			}
		case <-time.After(stopTimeout):
			cmd.Process.Kill()
			t.Errorf("vdisk serve %v did not stop on SIGTERM", args)
		}
	}
	t.Cleanup(func() {
		if !stopped {
			cmd.Process.Kill()
			<-done
		}
	})
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			return "nbd+unix:///?socket=" + sock, stop
		}
		select {
		case err := <-done:
			stopped = true
			t.Fatalf("vdisk serve %v exited: %v: %s", args, err, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if i > 1500 {
			t.Fatalf("vdisk serve %v did not listen: %s", args, stderr.String())
		}
	}
}

// testS3Formats: every format round-trips through s3://. vdisk creates
// it in the store, qemu-io writes through vdisk serve (and the same
// writes go to a local raw reference), the server restarts, qemu-io reads
// the patterns back and qemu-img compare finds the export equal to the
// reference; the file the format keeps in the chunks passes qemu-img
// check, and vdisk convert downloads it equal too.
func testS3Formats(t *testing.T, srv *s3test.Server) {
	imagetest.NeedTool(t, "qemu-io")
	e := newEnv(t)
	withS3 := s3Env(srv)
	writes := []string{"write -P 0xa1 0 64k", "write -P 0xb2 1M 1M", "write -P 0xc3 9M 3k", "write -z 3M 64k", "write -P 0xd4 16773120 4k"}
	for _, f := range s3Formats {
		t.Run(f.name, func(t *testing.T) {
			e := *e
			e.t = t
			prefix := fmt.Sprintf("e2e-fmt-%s-%d", f.name, time.Now().UnixNano())
			url := "s3://" + srv.Bucket + "/" + prefix
			e.mustWith(withS3, "create", "-f", f.name, "--size", "16M", url)
			ref := filepath.Join(e.dir, f.name+"-ref.raw")
			if err := os.WriteFile(ref, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(ref, 16<<20); err != nil {
				t.Fatal(err)
			}
			var args []string
			for _, w := range writes {
				args = append(args, "-c", w)
			}
			uri, stop := serveS3(t, srv, url)
			sh(t, "qemu-io", append(append([]string{"-f", "raw"}, args...), "-c", "flush", uri)...)
			sh(t, "qemu-io", append(append([]string{"-f", "raw"}, args...), ref)...)
			stop()

			uri, stop = serveS3(t, srv, "--read-only", url)
			for _, w := range writes {
				if !strings.HasPrefix(w, "write -P") {
					continue
				}
				if out := sh(t, "qemu-io", "-r", "-f", "raw", "-c", strings.Replace(w, "write", "read", 1), uri); strings.Contains(out, "fail") {
					t.Errorf("after a restart %q reads back wrong:\n%s", w, out)
				}
			}
			sh(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", uri, ref)
			stop()

			if f.name != "raw" {
				stored := storedFile(t, srv, prefix)
				if f.qemu != "vpc" { // qemu-img has no checks for VHD
					sh(t, "qemu-img", "check", "-f", f.qemu, stored)
				}
				sh(t, "qemu-img", "compare", "-f", f.qemu, "-F", "raw", stored, ref)
			}
			down := filepath.Join(e.dir, f.name+"-down."+f.name)
			e.mustWith(withS3, "convert", "-O", f.name, url, down)
			sh(t, "qemu-img", "compare", "-f", f.qemu, "-F", "raw", down, ref)
		})
	}
}
