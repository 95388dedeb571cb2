package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"vdisk/internal/api"
	"vdisk/internal/image/imagetest"
	"vdisk/internal/storage/chunked"
	"vdisk/internal/storage/objstore/s3/s3test"
)

// storedFile assembles the file a format keeps in the chunks of the
// s3:// image under prefix, straight from the store, and returns its
// local copy: what qemu-img is then asked to check.
func storedFile(t *testing.T, srv *s3test.Server, prefix string) string {
	t.Helper()
	ctx := context.Background()
	d, err := chunked.Open(ctx, srv.Store(t), prefix, chunked.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("open the stored image: %v", err)
	}
	defer d.Close()
	b := make([]byte, d.Length())
	if _, err := d.ReadAt(b, 0); err != nil {
		t.Fatalf("read the stored file: %v", err)
	}
	p := filepath.Join(t.TempDir(), "stored.img")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// testS3Qcow2: a qcow2 image qemu-img made is uploaded with vdisk convert;
// vdisk info reads its facts in the store; vdisk open serves qemu's data,
// takes writes and keeps them across close and reopen; the file in the
// chunks passes qemu-img check and holds exactly the data; vdisk convert
// downloads it.
func testS3Qcow2(t *testing.T, srv *s3test.Server) {
	e := newEnv(t)
	withS3 := s3Env(srv)
	prefix := fmt.Sprintf("e2e-qcow2-%d", time.Now().UnixNano())
	url := "s3://" + srv.Bucket + "/" + prefix

	ref := filepath.Join(e.dir, "ref.raw")
	data := bytes.Repeat([]byte("qemu wrote this; vdisk serves it from the store. "), (8<<20)/49+1)[:8<<20]
	clear(data[1<<20 : 3<<20]) // a hole qemu-img leaves unallocated
	if err := os.WriteFile(ref, data, 0o644); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(e.dir, "src.qcow2")
	sh(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", ref, src)
	e.mustWith(withS3, "convert", "-O", "qcow2", src, url)

	var im api.Image
	if err := json.Unmarshal([]byte(e.mustWith(withS3, "info", url, "--json")), &im); err != nil {
		t.Fatal(err)
	}
	if im.Format != "qcow2" || im.Size != 8<<20 || im.Details == nil || im.Details.ClusterSize != 64<<10 {
		t.Fatalf("info of the uploaded image: %+v (details %+v)", im, im.Details)
	}
	if s := im.Store; s == nil || s.Chunks < 1 || s.ChunkSize != 4<<20 || s.FileLength < 6<<20 || s.Capacity < 8<<20 ||
		s.LeaseHolder != "" || im.Allocated < s.FileLength-4<<20 {
		t.Fatalf("info's store details: %+v, allocated %d", s, im.Allocated)
	}

	dev, id := e.openWith(withS3, url, "--s3-cache-dir", filepath.Join(e.dir, "cache"))
	if l := listDisks(t, e); len(l) != 1 || l[0].Format != "qcow2" || l[0].Size != 8<<20 {
		t.Fatalf("list: %+v, want the qcow2 image of 8 MiB", l)
	}
	if !bytes.Equal(readFile(t, copyDevice(t, dev)), data) {
		t.Fatal("the device does not serve the data qemu-img wrote")
	}
	writePatterns(t, dev, ref, []patternWrite{{0, 4096, 0xa1}, {2<<20 - 512, 64 << 10, 0xb2}, {8<<20 - 4096, 4096, 0xc3}})
	e.must("close", id)

	dev, id = e.openWith(withS3, url)
	if !bytes.Equal(readFile(t, copyDevice(t, dev)), readFile(t, ref)) {
		t.Fatal("after close and reopen the device differs from the reference")
	}
	e.must("close", id)

	stored := storedFile(t, srv, prefix)
	sh(t, "qemu-img", "check", "-f", "qcow2", stored)
	sh(t, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", stored, ref)

	out := filepath.Join(e.dir, "down.raw")
	e.mustWith(withS3, "convert", url, out)
	if !bytes.Equal(readFile(t, out), readFile(t, ref)) {
		t.Fatal("the downloaded image differs from the reference")
	}

	// A discard through qcow2 frees the data clusters, and the chunks
	// they leave all zero are deleted from the bucket: only the chunk
	// with the qcow2 metadata stays.
	dev, id = e.openWith(withS3, url)
	sh(t, "blkdiscard", dev)
	sh(t, "sync", dev)
	e.must("close", id)
	im = api.Image{}
	if err := json.Unmarshal([]byte(e.mustWith(withS3, "info", url, "--json")), &im); err != nil {
		t.Fatal(err)
	}
	if im.Store == nil || im.Store.Chunks != 1 {
		t.Fatalf("after blkdiscard the store keeps %+v, want only the metadata chunk", im.Store)
	}

	// A format mismatch and a backing file are refused by name.
	if _, errs, code := e.runWith(withS3, bin, "info", url, "--format", "vmdk", "--json"); code == 0 || !strings.Contains(errs, "holds a qcow2 image") {
		t.Fatalf("info --format vmdk of a qcow2 image: exit %d, %s", code, errs)
	}
	if _, errs, code := e.runWith(withS3, bin, "create", "-f", "qcow2", "-b", src, "-F", "qcow2", url+"-b"); code == 0 || !strings.Contains(errs, "backing file") {
		t.Fatalf("create with a backing file in the store: exit %d, %s", code, errs)
	}
}

// testS3Encrypted: vdisk create -f qcow2 --encrypt luks2 s3://… makes a
// LUKS2 volume inside a qcow2 image in the store; open with the key writes
// through both layers; what the store holds is ciphertext that cryptsetup
// unlocks with the same key.
func testS3Encrypted(t *testing.T, srv *s3test.Server) {
	e := newEnv(t)
	withS3 := s3Env(srv)
	url := fmt.Sprintf("s3://%s/e2e-luks-%d", srv.Bucket, time.Now().UnixNano())
	key := filepath.Join(e.dir, "key")
	if err := os.WriteFile(key, []byte("s3 e2e passphrase"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.mustWith(withS3, "create", "-f", "qcow2", "--encrypt", "luks2", "--key-file", key,
		"--pbkdf-force-iterations", "4", "--pbkdf-memory", "32768", "--size", "16M", url)

	dev, id := e.openWith(withS3, url, "--key-file", key)
	if l := listDisks(t, e); len(l) != 1 || !l[0].Encrypted || l[0].Format != "qcow2" || l[0].Size != 16<<20 {
		t.Fatalf("list: %+v, want an encrypted qcow2 disk of 16 MiB", l)
	}
	ref := filepath.Join(e.dir, "ref.raw")
	if err := os.WriteFile(ref, make([]byte, 16<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	writePatterns(t, dev, ref, []patternWrite{{0, 1 << 20, 'P'}, {9 << 20, 300 << 10, 'Q'}})
	e.must("close", id)

	cipher := filepath.Join(e.dir, "cipher.raw")
	e.mustWith(withS3, "convert", "--no-decrypt", url, cipher)
	sh(t, "cryptsetup", "open", "--test-passphrase", "--key-file", key, cipher)
	if bytes.Contains(readFile(t, cipher), bytes.Repeat([]byte{'P'}, 4096)) {
		t.Fatal("the store holds the plaintext")
	}
	plain := filepath.Join(e.dir, "plain.raw")
	e.mustWith(withS3, "convert", "--key-file", key, url, plain)
	if !bytes.Equal(readFile(t, plain), readFile(t, ref)) {
		t.Fatal("decrypted download differs from what was written")
	}
}

// openWith is open with the command adjusted by mod.
func (e *env) openWith(mod func(*exec.Cmd), args ...string) (dev, id string) {
	e.t.Helper()
	f := strings.Fields(e.mustWith(mod, append([]string{"open"}, args...)...))
	if len(f) != 2 {
		e.t.Fatalf("open printed %q, want the device and the id", f)
	}
	return f[0], f[1]
}

// testS3Outage: the store stops while a qcow2 disk in it is open and
// written; vdisk list reports the disk degraded (through the qcow2 layer),
// and open again once the store is back; an fsync then stores every
// write, and a reopen on a fresh cache reads them.
func testS3Outage(t *testing.T, srv *s3test.Server) {
	e := newEnv(t)
	withS3 := s3Env(srv)
	url := fmt.Sprintf("s3://%s/e2e-outage-%d", srv.Bucket, time.Now().UnixNano())
	e.mustWith(withS3, "create", "-f", "qcow2", "--size", "16M", url)
	dev, id := e.openWith(withS3, url)
	ref := filepath.Join(e.dir, "ref.raw")
	if err := os.WriteFile(ref, make([]byte, 16<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	writePatterns(t, dev, ref, []patternWrite{{0, 1 << 20, 'a'}})

	state := func() api.Disk {
		l := listDisks(t, e)
		if len(l) != 1 {
			t.Fatalf("list: %+v", l)
		}
		return l[0]
	}
	waitState := func(want string) api.Disk {
		t.Helper()
		deadline := time.Now().Add(90 * time.Second)
		for {
			d := state()
			if d.State == want || time.Now().After(deadline) {
				return d
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	restarted := false
	defer func() {
		if !restarted {
			srv.Start()
		}
	}()
	// Written without fsync: the writes reach the daemon's cache, and its
	// write-back finds the store gone.
	f, err := os.OpenFile(dev, os.O_WRONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	buf := alignedBlock(64<<10, 'b')
	for _, off := range []int64{2 << 20, 6 << 20, 10 << 20} {
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatalf("write during the outage: %v", err)
		}
	}
	f.Close()
	rf, err := os.OpenFile(ref, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{2 << 20, 6 << 20, 10 << 20} {
		rf.WriteAt(buf, off)
	}
	rf.Close()
	if d := waitState(api.StateDegraded); d.State != api.StateDegraded || d.Error == "" {
		t.Fatalf("with the store down: %+v, want degraded with a reason", d)
	} else {
		t.Logf("degraded: %s", d.Error)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	restarted = true
	if d := waitState(api.StateOpen); d.State != api.StateOpen {
		t.Fatalf("with the store back: %+v, want open", d)
	}
	sh(t, "sync", dev) // fsync of the device: every write to the store
	e.must("close", id)
	dev, id = e.openWith(withS3, url, "--s3-cache-dir", filepath.Join(e.dir, "fresh"))
	if !bytes.Equal(readFile(t, copyDevice(t, dev)), readFile(t, ref)) {
		t.Fatal("after the outage the disk differs from what was written")
	}
	e.must("close", id)
}

// alignedBlock returns n bytes of b, aligned for O_DIRECT.
func alignedBlock(n int, b byte) []byte {
	raw := make([]byte, n+4096)
	off := 4096 - int(uintptr(unsafe.Pointer(&raw[0]))%4096)
	p := raw[off%4096 : off%4096+n]
	for i := range p {
		p[i] = b
	}
	return p
}

// testS3Check: vdisk check reads a qcow2 image's metadata from the store
// (clean after writes, also as JSON), says a missing image is missing, and
// a raw image has nothing to check (exit 63, as for a raw file).
func testS3Check(t *testing.T, srv *s3test.Server) {
	e := newEnv(t)
	withS3 := s3Env(srv)
	prefix := fmt.Sprintf("e2e-check-%d", time.Now().UnixNano())
	url := "s3://" + srv.Bucket + "/" + prefix
	e.mustWith(withS3, "create", "-f", "qcow2", "--size", "16M", url)
	dev, id := e.openWith(withS3, url)
	ref := filepath.Join(e.dir, "ref.raw")
	if err := os.WriteFile(ref, make([]byte, 16<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	writePatterns(t, dev, ref, []patternWrite{{0, 1 << 20, 'c'}})
	e.must("close", id)
	if out := e.mustWith(withS3, "check", url); !strings.Contains(out, "No errors were found") {
		t.Fatalf("check of a clean image:\n%s", out)
	}
	var res struct {
		Leaks int `json:"leaks"`
	}
	if err := json.Unmarshal([]byte(e.mustWith(withS3, "check", "--json", url)), &res); err != nil || res.Leaks != 0 {
		t.Fatalf("check --json: %+v %v", res, err)
	}
	if _, errs, code := e.runWith(withS3, bin, "check", "s3://"+srv.Bucket+"/no-such-image"); code != 1 || !strings.Contains(errs, "no image") {
		t.Fatalf("check of a missing image: exit %d, %q", code, errs)
	}
	raw := fmt.Sprintf("s3://%s/e2e-check-raw-%d", srv.Bucket, time.Now().UnixNano())
	e.mustWith(withS3, "create", "--size", "1M", raw)
	if _, _, code := e.runWith(withS3, bin, "check", raw); code != 63 {
		t.Fatalf("check of a raw image in the store: exit %d, want 63 (nothing to check)", code)
	}
}

// testS3Resize: vdisk resize of images in the store that are not open: a
// raw one grows, keeps its data and shrinks with --shrink; a qcow2 one
// grows past the capacity its file was created with, and qemu-img finds
// the stored file consistent; an open one is refused naming the writer.
func testS3Resize(t *testing.T, srv *s3test.Server) {
	e := newEnv(t)
	withS3 := s3Env(srv)
	raw := fmt.Sprintf("s3://%s/e2e-resize-%d", srv.Bucket, time.Now().UnixNano())
	e.mustWith(withS3, "create", "--size", "10M", raw)
	dev, id := e.openWith(withS3, raw)
	ref := filepath.Join(e.dir, "ref.raw")
	if err := os.WriteFile(ref, make([]byte, 10<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	writePatterns(t, dev, ref, []patternWrite{{0, 64 << 10, 'r'}, {10<<20 - 4096, 4096, 's'}})
	if _, errs, code := e.runWith(withS3, bin, "resize", "--socket", filepath.Join(e.dir, "no-daemon.sock"), raw, "20M"); code == 0 || !strings.Contains(errs, "in use by") {
		t.Fatalf("resize of an image open elsewhere: exit %d, %q", code, errs)
	}
	e.must("close", id)
	e.mustWith(withS3, "resize", raw, "+10M")
	dev, id = e.openWith(withS3, raw)
	want := append(readFile(t, ref), make([]byte, 10<<20)...)
	if !bytes.Equal(readFile(t, copyDevice(t, dev)), want) {
		t.Fatal("after growing, the disk is not the old data followed by zeroes")
	}
	e.must("close", id)
	if _, errs, code := e.runWith(withS3, bin, "resize", raw, "5M"); code == 0 || !strings.Contains(errs, "--shrink") {
		t.Fatalf("shrink without --shrink: exit %d, %q", code, errs)
	}
	e.mustWith(withS3, "resize", "--shrink", raw, "5M")
	var im api.Image
	if err := json.Unmarshal([]byte(e.mustWith(withS3, "info", raw, "--json")), &im); err != nil || im.Size != 5<<20 {
		t.Fatalf("info after the shrink: %+v, %v", im, err)
	}

	prefix := fmt.Sprintf("e2e-resize-q-%d", time.Now().UnixNano())
	q := "s3://" + srv.Bucket + "/" + prefix
	e.mustWith(withS3, "create", "-f", "qcow2", "--size", "64M", q)
	dev, id = e.openWith(withS3, q)
	qref := filepath.Join(e.dir, "qref.raw")
	if err := os.WriteFile(qref, make([]byte, 64<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	writePatterns(t, dev, qref, []patternWrite{{1 << 20, 1 << 20, 'q'}})
	e.must("close", id)
	e.mustWith(withS3, "resize", q, "3G") // past the capacity of 64M + 1G
	if err := json.Unmarshal([]byte(e.mustWith(withS3, "info", q, "--json")), &im); err != nil || im.Size != 3<<30 || im.Store == nil || im.Store.Capacity < 3<<30 {
		t.Fatalf("info of the grown qcow2 image: %+v (store %+v), %v", im, im.Store, err)
	}
	stored := storedFile(t, srv, prefix)
	sh(t, "qemu-img", "check", "-f", "qcow2", stored)
	if err := os.Truncate(qref, 3<<30); err != nil { // the old data, then zeroes
		t.Fatal(err)
	}
	sh(t, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", stored, qref)
}

// testS3Takeover: a `vdisk serve` writer killed with SIGKILL leaves its
// lease behind. Until the lease (--s3-lease-ttl 5s) expires another writer
// is refused naming it; after, it is refused still, with the advice to
// force; --force-takeover then takes the image, with every write the dead
// writer flushed.
func testS3Takeover(t *testing.T, srv *s3test.Server) {
	imagetest.NeedTool(t, "qemu-io")
	e := newEnv(t)
	withS3 := s3Env(srv)
	url := fmt.Sprintf("s3://%s/e2e-takeover-%d", srv.Bucket, time.Now().UnixNano())
	e.mustWith(withS3, "create", "--size", "16M", url)
	serve := func(args ...string) (*exec.Cmd, string) {
		sock := filepath.Join(t.TempDir(), "nbd.sock")
		cmd := exec.Command(bin, append([]string{"serve", "--unix", sock}, args...)...)
		withS3(cmd)
		cmd.Env = append(os.Environ(), cmd.Env...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		for i := 0; ; i++ {
			if _, err := os.Stat(sock); err == nil {
				return cmd, "nbd+unix:///?socket=" + sock
			}
			if i > 300 {
				t.Fatalf("vdisk serve %v did not listen: %s", args, stderr.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	w, uri := serve("--s3-lease-ttl", "5s", url)
	sh(t, "qemu-io", "-f", "raw", "-c", "write -P 0x7a 3M 512k", "-c", "flush", uri)
	w.Process.Kill()
	w.Wait()

	_, errs, code := e.runWith(withS3, bin, "serve", "--unix", filepath.Join(t.TempDir(), "s"), url)
	if code == 0 || !strings.Contains(errs, "in use by") {
		t.Fatalf("a second writer while the lease lasts: exit %d, %q", code, errs)
	}
	time.Sleep(5500 * time.Millisecond) // the lease runs out at most 5 s after the kill
	_, errs, code = e.runWith(withS3, bin, "serve", "--unix", filepath.Join(t.TempDir(), "s"), url)
	if code == 0 || !strings.Contains(errs, "expired") || !strings.Contains(errs, "force") {
		t.Fatalf("a second writer after the lease expired, without force: exit %d, %q", code, errs)
	}
	_, uri = serve("--force-takeover", url)
	if out := sh(t, "qemu-io", "-f", "raw", "-c", "read -P 0x7a 3M 512k", uri); strings.Contains(out, "fail") {
		t.Fatalf("the taken image lacks the dead writer's flushed write:\n%s", out)
	}
}
