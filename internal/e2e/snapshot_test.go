package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"vdisk/internal/api"
	"vdisk/internal/image/imagetest"
	"vdisk/internal/nbd/nbdtest"
	"vdisk/internal/storage/objstore/s3/s3test"
)

// sum256 is the sha256 of the file at path.
func sum256(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// mustBeEmpty fails unless dir holds nothing.
func mustBeEmpty(t *testing.T, dir, when string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Fatalf("%s: the snapshot directory holds %s", when, ents[0].Name())
	}
}

// fioVerify writes and verifies size bytes through the NBD export uri.
func fioVerify(t *testing.T, uri, size string) {
	t.Helper()
	out := sh(t, "fio", "--name=snapshot", "--ioengine=nbd", "--uri="+uri, "--rw=randwrite", "--bsrange=4k-64k",
		"--size="+size, "--iodepth=8", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--randrepeat=0")
	if !strings.Contains(out, "snapshot: (groupid=0") {
		t.Fatalf("fio printed no result:\n%s", out)
	}
}

// overlayOf returns the path under /proc of the unlinked overlay file the
// process pid holds in dir.
func overlayOf(t *testing.T, pid int, dir string) string {
	t.Helper()
	fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
	for _, fd := range fds {
		if l, err := os.Readlink(fd); err == nil && strings.HasPrefix(l, dir+"/") && strings.HasSuffix(l, " (deleted)") {
			return fd
		}
	}
	t.Fatalf("process %d holds no unlinked file in %s", pid, dir)
	return ""
}

// TestSnapshotServe: fio writes and verifies through `vdisk serve
// --snapshot` over raw, qcow2, vhdx and LUKS2 images; the image's bytes
// never change, the snapshot directory stays empty while serving and after
// SIGTERM, and the overlay of the LUKS image holds neither the client's
// plaintext nor the decrypted base data copied into it.
func TestSnapshotServe(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	imagetest.NeedTool(t, "fio")
	imagetest.NeedTool(t, "qemu-img")
	imagetest.NeedTool(t, "qemu-io")
	for _, format := range []string{"raw", "qcow2", "vhdx", "luks"} {
		t.Run(format, func(t *testing.T) {
			e := newEnv(t)
			snapDir := filepath.Join(e.base, "snap")
			if err := os.Mkdir(snapDir, 0o700); err != nil {
				t.Fatal(err)
			}
			img := filepath.Join(e.dir, "base."+format)
			var args []string
			if format == "luks" {
				key := filepath.Join(e.dir, "key")
				if err := os.WriteFile(key, []byte("hunter2"), 0o600); err != nil {
					t.Fatal(err)
				}
				e.must("create", "--encrypt", "luks2", "--key-file", key, "--pbkdf-force-iterations", "4", "--pbkdf-memory", "32768", img, "--size", "64M")
				args = []string{"--key-file", key}
				// The base's plaintext: 0x3c everywhere.
				s := startServe(t, nil, append(args, img)...)
				sh(t, "qemu-io", "-f", "raw", "-c", "write -P 0x3c 0 64M", "-c", "flush", s.uri)
				s.stop(t)
			} else {
				sh(t, "qemu-img", "create", "-q", "-f", format, img, "64M")
				sh(t, "qemu-io", "-f", format, "-c", "write -P 0x3c 0 64M", img)
			}
			sum := sum256(t, img)
			s := startServe(t, nil, append(args, "--snapshot", "--snapshot-dir", snapDir, img)...)
			fioVerify(t, s.uri, "32M")
			// Partial writes into clusters the base fills, and a marker.
			sh(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 40M 4k", "-c", "write -P 0x5a 48M 1M", "-c", "read -P 0x3c 41947136 60k", s.uri)
			sh(t, "qemu-io", "-f", "raw", "-c", "read -P 0x5a 48M 1M", "-c", "read -P 0x3c 50M 1M", s.uri)
			mustBeEmpty(t, snapDir, "while serving")
			if sum256(t, img) != sum {
				t.Fatal("the snapshot wrote its image")
			}
			if format == "luks" {
				ov, err := os.ReadFile(overlayOf(t, s.cmd.Process.Pid, snapDir))
				if err != nil {
					t.Fatal(err)
				}
				if len(ov) < 32<<20 {
					t.Fatalf("the overlay holds %d bytes", len(ov))
				}
				for _, p := range []byte{0x5a, 0x3c} {
					if bytes.Contains(ov, bytes.Repeat([]byte{p}, 512)) {
						t.Fatalf("the overlay holds a sector of %#x in the clear", p)
					}
				}
			}
			s.stop(t)
			mustBeEmpty(t, snapDir, "after SIGTERM")
			if sum256(t, img) != sum {
				t.Fatal("the snapshot wrote its image")
			}
			// What the snapshot wrote is gone.
			s = startServe(t, nil, append(args, "--read-only", img)...)
			sh(t, "qemu-io", "-f", "raw", "-r", "-c", "read -P 0x3c 0 64M", s.uri)
			s.stop(t)
		})
	}
}

// TestSnapshotServeS3: the same over an image in an object store, which
// keeps its chunks: a copy of the image is the same before and after.
func TestSnapshotServeS3(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	imagetest.NeedTool(t, "fio")
	imagetest.NeedTool(t, "qemu-io")
	srv := s3test.Need(t)
	e := newEnv(t)
	withS3 := s3Env(srv)
	url := fmt.Sprintf("s3://%s/e2e-snap-%d", srv.Bucket, time.Now().UnixNano())
	e.mustWith(withS3, "create", "--size", "64M", url)
	s := startServe(t, withS3, url)
	sh(t, "qemu-io", "-f", "raw", "-c", "write -P 0x3c 0 64M", "-c", "flush", s.uri)
	s.stop(t)
	before := filepath.Join(e.dir, "before.raw")
	e.mustWith(withS3, "convert", "-O", "raw", url, before)
	snapDir := filepath.Join(e.base, "snap")
	if err := os.Mkdir(snapDir, 0o700); err != nil {
		t.Fatal(err)
	}
	s = startServe(t, withS3, "--snapshot", "--snapshot-dir", snapDir, url)
	fioVerify(t, s.uri, "32M")
	mustBeEmpty(t, snapDir, "while serving")
	s.stop(t)
	mustBeEmpty(t, snapDir, "after SIGTERM")
	after := filepath.Join(e.dir, "after.raw")
	e.mustWith(withS3, "convert", "-O", "raw", url, after)
	if sum256(t, before) != sum256(t, after) {
		t.Fatal("the snapshot wrote its s3:// image")
	}

	// A local overlay over the s3:// image: the URL is recorded (qemu
	// cannot follow it; vdisk checks it on reopen), the base unchanged.
	top := filepath.Join(e.dir, "top.qcow2")
	s = startServe(t, withS3, "--overlay", top, url)
	fioVerify(t, s.uri, "16M")
	s.stop(t)
	var info struct {
		Backing string `json:"backing-filename"`
		Format  string `json:"backing-filename-format"`
	}
	if err := json.Unmarshal([]byte(sh(t, "qemu-img", "info", "--output=json", top)), &info); err != nil {
		t.Fatal(err)
	}
	if info.Backing != url || info.Format != "raw" {
		t.Fatalf("qemu-img info of the overlay over %s: %+v", url, info)
	}
	s = startServe(t, withS3, "--overlay", top, "--read-only", url)
	sh(t, "qemu-io", "-f", "raw", "-r", "-c", "read -P 0x3c 60M 4M", s.uri)
	s.stop(t)
	e.mustWith(withS3, "convert", "-O", "raw", url, after+".2")
	if sum256(t, before) != sum256(t, after+".2") {
		t.Fatal("the overlay wrote its s3:// base")
	}
}

// TestSnapshotDaemon: `vdisk open --snapshot` through the daemon (via
// FUSE): fio verifies through the disk, the image never changes, and the
// snapshot directory is empty after close, after the daemon's SIGTERM,
// and after kill -9, whose restart drops the disk (its overlay is gone)
// and frees its mount.
func TestSnapshotDaemon(t *testing.T) {
	e := newEnv(t)
	imagetest.NeedTool(t, "fio")
	imagetest.NeedTool(t, "qemu-img")
	snapDir := filepath.Join(e.base, "snap")
	if err := os.Mkdir(snapDir, 0o700); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(e.dir, "base.qcow2")
	sh(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "64M")
	sum := sum256(t, img)
	open := func() (string, string) {
		dev, id := e.open("--snapshot", "--snapshot-dir", snapDir, "--via", "fuse", img)
		l := listDisks(t, e)
		if len(l) != 1 || !l[0].Snapshot || l[0].SnapshotDir != snapDir || l[0].ReadOnly {
			t.Fatalf("list: %+v, want one writable snapshot disk", l)
		}
		out := sh(t, "fio", "--name=snapshot", "--filename="+dev, "--direct=1", "--ioengine=libaio", "--rw=randwrite",
			"--bsrange=4k-64k", "--size=32M", "--iodepth=8", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1")
		if !strings.Contains(out, "snapshot: (groupid=0") {
			t.Fatalf("fio printed no result:\n%s", out)
		}
		mustBeEmpty(t, snapDir, "while open")
		return dev, id
	}
	unchanged := func(when string) {
		t.Helper()
		mustBeEmpty(t, snapDir, when)
		if sum256(t, img) != sum {
			t.Fatalf("%s: the snapshot wrote its image", when)
		}
	}

	_, id := open()
	e.must("close", id)
	unchanged("after close")

	open()
	e.stopDaemon(e.daemonPID(), syscall.SIGTERM)
	unchanged("after the daemon's SIGTERM")
	if l := listDisks(t, e); len(l) != 0 { // starts a daemon
		t.Fatalf("after SIGTERM and restart: %+v", l)
	}

	open()
	e.stopDaemon(e.daemonPID(), syscall.SIGKILL)
	unchanged("after kill -9")
	if l := listDisks(t, e); len(l) != 0 { // starts a daemon, which drops the disk
		t.Fatalf("after kill -9 and restart: %+v, want the snapshot disk dropped", l)
	}
	log, _ := os.ReadFile(filepath.Join(e.base, "run", "vdisk-daemon.log"))
	if !strings.Contains(string(log), "dropped snapshot disk") {
		t.Fatalf("the daemon log says nothing of the dropped disk:\n%s", log)
	}
	if isMounted(filepath.Join(e.base, "run", "mnt", id)) {
		t.Fatal("the dropped disk's FUSE mount is still there")
	}
	unchanged("after the restart")
	// The image opens again as itself.
	open()
}

// TestOverlayServe: `vdisk serve --overlay` makes a qcow2 overlay over a
// VHDX base (fio verifies through it), qemu-img accepts it with the base
// recorded, it serves again, and a mismatched base is refused.
func TestOverlayServe(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	imagetest.NeedTool(t, "fio")
	imagetest.NeedTool(t, "qemu-img")
	dir := t.TempDir()
	base := filepath.Join(dir, "base.vhdx")
	sh(t, "qemu-img", "create", "-q", "-f", "vhdx", base, "64M")
	sum := sum256(t, base)
	top := filepath.Join(dir, "top.qcow2")
	s := startServe(t, nil, "--overlay", top, base)
	fioVerify(t, s.uri, "32M")
	s.stop(t)
	if sum256(t, base) != sum {
		t.Fatal("the overlay wrote its base")
	}
	var info struct {
		Backing string `json:"backing-filename"`
		Format  string `json:"backing-filename-format"`
	}
	for _, qemuImg := range []string{"qemu-img", filepath.Join(nbdtest.Qemu10(t), "qemu-img")} {
		if err := json.Unmarshal([]byte(sh(t, qemuImg, "info", "--output=json", top)), &info); err != nil {
			t.Fatal(err)
		}
		if info.Backing != "base.vhdx" || info.Format != "vhdx" {
			t.Fatalf("%s info: %+v", qemuImg, info)
		}
		sh(t, qemuImg, "check", top)
	}
	s = startServe(t, nil, "--overlay", top, "--read-only", base)
	s.stop(t)

	other := filepath.Join(dir, "other.vhdx")
	sh(t, "qemu-img", "create", "-q", "-f", "vhdx", other, "64M")
	cmd := exec.Command(bin, "serve", "--unix", filepath.Join(dir, "x.sock"), "--overlay", top, other)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "rebase") {
		t.Fatalf("serve over another base: %v\n%s", err, out)
	}
}

// TestOverlayOpen: `vdisk open --overlay` through the daemon makes the
// overlay beside its raw base, keeps it across a reopen, and refuses
// another base.
func TestOverlayOpen(t *testing.T) {
	e := newEnv(t)
	imagetest.NeedTool(t, "qemu-img")
	base := filepath.Join(e.dir, "base.raw")
	if err := os.WriteFile(base, bytes.Repeat([]byte{0x3c}, 16<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	top := filepath.Join(e.dir, "top.qcow2")
	dev, id := e.open("--overlay", top, "--format", "raw", "--via", "fuse", base)
	l := listDisks(t, e)
	if len(l) != 1 || l[0].File != top || l[0].Base != base || l[0].Format != "qcow2" {
		t.Fatalf("list: %+v", l)
	}
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0x5a}, 4096), 1<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	e.must("close", id)
	sh(t, "qemu-img", "check", top)
	got := imagetest.QemuRaw(t, top, "qcow2")
	want := bytes.Repeat([]byte{0x3c}, 16<<20)
	copy(want[1<<20:], bytes.Repeat([]byte{0x5a}, 4096))
	if !bytes.Equal(got, want) {
		t.Fatal("qemu reads another disk through the overlay")
	}
	dev, _ = e.open("--overlay", top, "--format", "raw", "--via", "fuse", base)
	f, err = os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4096)
	if _, err := io.ReadFull(io.NewSectionReader(f, 1<<20, 4096), b); err != nil || b[0] != 0x5a {
		t.Fatalf("reopened overlay: %v, %#x", err, b[0])
	}
	f.Close()
	// A daemon killed and restarted reopens the overlay over its base.
	e.stopDaemon(e.daemonPID(), syscall.SIGKILL)
	l = listDisks(t, e)
	if len(l) != 1 || l[0].State != api.StateOpen || l[0].Base != base || l[0].File != top {
		t.Fatalf("after kill -9 and restart: %+v", l)
	}
	e.must("close", l[0].ID)
	other := filepath.Join(e.dir, "other.raw")
	if err := os.WriteFile(other, make([]byte, 16<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, errs, code := e.run("open", "--overlay", top, "--format", "raw", other); code == 0 || !strings.Contains(errs, "rebase") {
		t.Fatalf("open over another base: exit %d: %s", code, errs)
	}
}
