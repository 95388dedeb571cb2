package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"vdisk/internal/image/imagetest"
)

// TestServeCacheModes writes and verifies with fio through vdisk serve in
// every cache mode and I/O mode, raw and qcow2, with block sizes from 512
// bytes up so that the direct modes take both their aligned and their
// bounce paths; a second server, in the default mode, verifies again what
// the first left in the file.
func TestServeCacheModes(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	imagetest.NeedTool(t, "fio")
	for _, format := range []string{"raw", "qcow2"} {
		for _, cache := range []string{"writeback", "none", "directsync", "unsafe"} {
			for _, aio := range []string{"threads", "io_uring"} {
				t.Run(format+"/"+cache+"/"+aio, func(t *testing.T) {
					dir := t.TempDir()
					img := filepath.Join(dir, "disk."+format)
					srv := startServe(t, nil, "--create", "--size", "16M", "-f", format, "--cache", cache, "--aio", aio, img)
					job := []string{"--name=verify", "--ioengine=nbd", "--uri=" + srv.uri, "--size=16M",
						"--rw=randwrite", "--bsrange=512-64k", "--iodepth=16", "--verify=crc32c", "--verify_fatal=1",
						"--randseed=" + fmt.Sprint(len(cache)+len(aio)), "--output-format=terse"}
					sh(t, "fio", append(job, "--do_verify=1")...)
					srv.stop(t)
					srv = startServe(t, nil, "-f", format, img)
					job[2] = "--uri=" + srv.uri
					sh(t, "fio", append(job, "--verify_only")...)
					srv.stop(t)
				})
			}
		}
	}
}

// TestServeCacheNoneCrash kills vdisk serve --cache=none with SIGKILL right
// after a flush: what the flush covered is in the file, raw and qcow2.
func TestServeCacheNoneCrash(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	imagetest.NeedTool(t, "qemu-io")
	for _, format := range []string{"raw", "qcow2"} {
		for _, aio := range []string{"threads", "io_uring"} {
			t.Run(format+"/"+aio, func(t *testing.T) {
				dir := t.TempDir()
				img := filepath.Join(dir, "disk."+format)
				srv := startServe(t, nil, "--create", "--size", "32M", "-f", format, "--cache", "none", "--aio", aio, img)
				sh(t, "qemu-io", "-f", "raw",
					"-c", "write -P 0xab 0 4M",
					"-c", "write -P 0xcd 5000 3000", // unaligned: the server's bounce path
					"-c", "write -P 0xef 20M 1M",
					"-c", "flush", srv.uri)
				srv.kill()
				out := sh(t, "qemu-io", "-f", format, "-r",
					"-c", "read -P 0xab 0 5000",
					"-c", "read -P 0xcd 5000 3000",
					"-c", "read -P 0xab 8000 4186304",
					"-c", "read -P 0xef 20M 1M", img)
				if strings.Contains(out, "Pattern verification failed") {
					t.Fatalf("flushed data lost:\n%s", out)
				}
				if format == "qcow2" {
					sh(t, "qemu-img", "check", img)
				}
			})
		}
	}
}
