package e2e

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"vdisk/internal/api"
	"vdisk/internal/image/imagetest"
)

// TestOpenFormatsParallelWriters runs fio with four jobs writing and
// verifying disjoint regions at once through each writable format, so
// blocks are allocated concurrently; the closed image then passes qemu-img
// check and qemu-img reads exactly what the device served.
func TestOpenFormatsParallelWriters(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	imagetest.NeedTool(t, "fio")
	for _, f := range diskFormats {
		t.Run(f.name, func(t *testing.T) {
			e := newEnv(t)
			img := filepath.Join(e.dir, "fio."+f.name)
			e.must("create", "-f", f.name, img, "--size", "64M")
			dev, _ := e.open(img)
			out := sh(t, "fio", "--name=parallel", "--filename="+dev, "--direct=1", "--ioengine=libaio",
				"--rw=randwrite", "--bs=16k", "--iodepth=16", "--numjobs=4", "--size=8M", "--offset_increment=16M",
				"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0", "--output-format=terse")
			if strings.Count(out, "\n3;") < 3 {
				t.Fatalf("fio printed no result for each of 4 jobs:\n%s", out)
			}
			served := copyDevice(t, dev)
			e.must("close", img)
			if f.check {
				sh(t, "qemu-img", "check", "-q", "-f", f.qemu, img)
			}
			sh(t, "qemu-img", "compare", "-q", "-f", f.qemu, "-F", "raw", img, served)
		})
	}
}

// TestOpenFormatsZeroAndDiscard zeroes (BLKZEROOUT) and discards
// (BLKDISCARD, on the formats that trim) ranges of written data through
// each format's device, whole and partial clusters alike: the ranges read
// as zeroes, the rest keeps its data, and after close qemu-img check
// passes and qemu-img reads the same content.
func TestOpenFormatsZeroAndDiscard(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	for _, f := range diskFormats {
		t.Run(f.name, func(t *testing.T) {
			e := newEnv(t)
			img := filepath.Join(e.dir, "zero."+f.name)
			e.must("create", "-f", f.name, img, "--size", "64M")
			d := e.openJSON(img)

			data := make([]byte, 16<<20)
			rand.Read(data)
			src := filepath.Join(t.TempDir(), "data")
			if err := os.WriteFile(src, data, 0o600); err != nil {
				t.Fatal(err)
			}
			sh(t, "dd", "if="+src, "of="+d.Device, "bs=1M", "oflag=direct", "conv=fsync,notrunc", "status=none")
			want := make([]byte, d.Size)
			copy(want, data)
			zero := func(off, n int64) { clear(want[off : off+n]) }

			type span struct{ off, n int64 }
			zeroes := []span{{off: 1<<20 + 4096, n: 3 << 20}, {off: 6<<20 - 512, n: 1024}}
			for _, z := range zeroes {
				sh(t, "blkdiscard", "-z", "-o", strconv.FormatInt(z.off, 10), "-l", strconv.FormatInt(z.n, 10), d.Device)
				zero(z.off, z.n)
			}
			if f.trim {
				discards := []span{{off: 8 << 20, n: 4 << 20}, {off: 12<<20 + 4096, n: 8192}}
				for _, z := range discards {
					sh(t, "blkdiscard", "-o", strconv.FormatInt(z.off, 10), "-l", strconv.FormatInt(z.n, 10), d.Device)
					zero(z.off, z.n)
				}
			}
			imagetest.MustEqual(t, d.Device, readFile(t, copyDevice(t, d.Device)), want)
			e.must("close", img)

			expected := filepath.Join(t.TempDir(), "expected.raw")
			if err := os.WriteFile(expected, want, 0o600); err != nil {
				t.Fatal(err)
			}
			if f.check {
				sh(t, "qemu-img", "check", "-q", "-f", f.qemu, img)
			}
			sh(t, "qemu-img", "compare", "-q", "-f", f.qemu, "-F", "raw", img, expected)
		})
	}
}

// TestOpenFormatsCrash kills the daemon with SIGKILL after fsync-acknowledged
// writes through each format: the image is consistent at once (qemu-img
// check), a new daemon restores the disk with the data, and the closed
// image holds exactly that data.
func TestOpenFormatsCrash(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	for _, f := range diskFormats {
		t.Run(f.name, func(t *testing.T) {
			e := newEnv(t)
			img := filepath.Join(e.dir, "crash."+f.name)
			e.must("create", "-f", f.name, img, "--size", "64M")
			d := e.openJSON(img)
			data := make([]byte, 24<<20)
			rand.Read(data)
			src := filepath.Join(t.TempDir(), "data")
			if err := os.WriteFile(src, data, 0o600); err != nil {
				t.Fatal(err)
			}
			sh(t, "dd", "if="+src, "of="+d.Device, "bs=1M", "oflag=direct", "conv=fsync,notrunc", "status=none")

			pid := e.daemonPID()
			if pid == 0 {
				t.Fatal("no daemon")
			}
			t.Cleanup(func() { e.detachStaleLoop(d.Device) })
			e.stopDaemon(pid, syscall.SIGKILL)
			if f.check {
				sh(t, "qemu-img", "check", "-q", "-f", f.qemu, img)
			}

			// Any command starts a new daemon, which restores the disk.
			var l api.DiskList
			if err := json.Unmarshal([]byte(e.must("list", "--json")), &l); err != nil {
				t.Fatal(err)
			}
			if len(l.Disks) != 1 || l.Disks[0].ID != d.ID || l.Disks[0].State != api.StateOpen || l.Disks[0].Format != f.name {
				t.Fatalf("after restart: %+v", l.Disks)
			}
			want := make([]byte, d.Size)
			copy(want, data)
			imagetest.MustEqual(t, l.Disks[0].Device, readFile(t, copyDevice(t, l.Disks[0].Device)), want)
			e.must("close", img)

			if f.check {
				sh(t, "qemu-img", "check", "-q", "-f", f.qemu, img)
			}
			expected := filepath.Join(t.TempDir(), "expected.raw")
			if err := os.WriteFile(expected, want, 0o600); err != nil {
				t.Fatal(err)
			}
			sh(t, "qemu-img", "compare", "-q", "-f", f.qemu, "-F", "raw", img, expected)
		})
	}
}

// detachStaleLoop detaches dev if it is still attached to this env's dead
// FUSE file: the loop device a killed daemon left behind.
func (e *env) detachStaleLoop(dev string) {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file"))
	if err != nil {
		return // detached
	}
	backing := strings.TrimSpace(string(b))
	// A lazily unmounted FUSE file shows as "/disk (deleted)".
	if !strings.HasPrefix(backing, e.base+"/") && backing != "/disk (deleted)" {
		return // not ours any more
	}
	e.t.Logf("detaching %s (%s), left attached after the daemon was killed", dev, backing)
	if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
		e.t.Logf("losetup -d %s: %v: %s", dev, err, out)
	}
}

// killWaitTimeout bounds the wait for a writer to have reached the image
// before the daemon is killed under it.
const killWaitTimeout = time.Minute

// TestOpenFormatsKilledMidWrite kills the daemon while a writer streams
// data through each format's device: the image is not corrupted (qemu-img
// check: at worst leaked clusters), a new daemon restores the disk, and
// after close qemu-img reads exactly what vdisk served.
func TestOpenFormatsKilledMidWrite(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	for _, f := range diskFormats {
		t.Run(f.name, func(t *testing.T) {
			e := newEnv(t)
			img := filepath.Join(e.dir, "kill."+f.name)
			e.must("create", "-f", f.name, img, "--size", "64M")
			d := e.openJSON(img)
			start, err := os.Stat(img)
			if err != nil {
				t.Fatal(err)
			}
			dd := exec.Command("dd", "if=/dev/urandom", "of="+d.Device, "bs=256k", "count=200", "oflag=direct", "status=none")
			if err := dd.Start(); err != nil {
				t.Fatal(err)
			}
			ddDone := false
			t.Cleanup(func() {
				if !ddDone {
					dd.Process.Kill()
					dd.Wait()
				}
			})
			// Kill once the writer has grown the image by 8 MiB.
			deadline := time.Now().Add(killWaitTimeout)
			for {
				st, err := os.Stat(img)
				if err != nil {
					t.Fatal(err)
				}
				if st.Size() >= start.Size()+8<<20 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the image grew from %d to %d bytes in %v", start.Size(), st.Size(), killWaitTimeout)
				}
				time.Sleep(time.Millisecond)
			}
			pid := e.daemonPID()
			if pid == 0 {
				t.Fatal("no daemon")
			}
			t.Cleanup(func() { e.detachStaleLoop(d.Device) })
			e.stopDaemon(pid, syscall.SIGKILL)
			ddErr := dd.Wait()
			ddDone = true
			if ddErr == nil {
				t.Log("the writer finished before the daemon was killed")
			}

			if f.check {
				checkNoCorruption(t, f.qemu, img)
			}
			var l api.DiskList
			if err := json.Unmarshal([]byte(e.must("list", "--json")), &l); err != nil {
				t.Fatal(err)
			}
			if len(l.Disks) != 1 || l.Disks[0].ID != d.ID || l.Disks[0].State != api.StateOpen {
				t.Fatalf("after restart: %+v", l.Disks)
			}
			served := copyDevice(t, l.Disks[0].Device)
			e.must("close", img)
			if f.check {
				checkNoCorruption(t, f.qemu, img)
			}
			sh(t, "qemu-img", "compare", "-q", "-f", f.qemu, "-F", "raw", img, served)
		})
	}
}

// checkNoCorruption runs qemu-img check on img and fails the test on any
// finding but leaked clusters (exit status 3), which an interrupted
// allocation may leave, as with qemu itself.
func checkNoCorruption(t *testing.T, format, img string) {
	t.Helper()
	out, err := exec.Command("qemu-img", "check", "-f", format, img).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.ExitCode() == 3:
		t.Logf("qemu-img check: leaked clusters only:\n%s", out)
	default:
		t.Fatalf("qemu-img check %s: %v\n%s", img, err, out)
	}
}
