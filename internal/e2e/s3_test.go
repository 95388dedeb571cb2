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

	"vdisk/internal/api"
	"vdisk/internal/storage/chunked"
	"vdisk/internal/storage/objstore/s3/s3test"
)

// s3Env returns the command adjustment that gives vdisk (and the daemon it
// starts, which inherits the environment) the test server's credentials.
func s3Env(srv *s3test.Server) func(*exec.Cmd) {
	cfg := srv.Config()
	return func(c *exec.Cmd) {
		c.Env = append(c.Env, "AWS_ACCESS_KEY_ID="+cfg.AccessKey, "AWS_SECRET_ACCESS_KEY="+cfg.SecretKey,
			"AWS_REGION="+cfg.Region, "VDISK_S3_ENDPOINT="+srv.Endpoint)
	}
}

// mustWith runs vdisk with args adjusted by mod and fails unless it
// succeeds.
func (e *env) mustWith(mod func(*exec.Cmd), args ...string) string {
	e.t.Helper()
	out, errs, code := e.runWith(mod, bin, args...)
	if code != 0 {
		e.t.Fatalf("vdisk %s: exit %d: %s", strings.Join(args, " "), code, errs)
	}
	return out
}

// TestS3 runs the s3:// tests against one versitygw.
func TestS3(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	srv := s3test.Need(t) // shared: TestMain's s3test.Main stops it at the end
	t.Run("open", func(t *testing.T) { testS3Open(t, srv) })
	t.Run("restart", func(t *testing.T) { testS3Restart(t, srv) })
	t.Run("qcow2", func(t *testing.T) { testS3Qcow2(t, srv) })
	t.Run("encrypted", func(t *testing.T) { testS3Encrypted(t, srv) })
	t.Run("check", func(t *testing.T) { testS3Check(t, srv) })
	t.Run("resize", func(t *testing.T) { testS3Resize(t, srv) })
	t.Run("formats", func(t *testing.T) { testS3Formats(t, srv) })
	t.Run("takeover", func(t *testing.T) { testS3Takeover(t, srv) })
	t.Run("outage", func(t *testing.T) { testS3Outage(t, srv) })
}

// testS3Open: vdisk open s3://… --size 64M → mkfs → mount → write → close
// (every acknowledged write in the store) → open again on a fresh cache →
// the data is there; a second daemon's open is refused naming the lease
// holder.
func testS3Open(t *testing.T, srv *s3test.Server) {
	e := newEnv(t)
	withS3 := s3Env(srv)
	url := fmt.Sprintf("s3://%s/e2e-%d", srv.Bucket, time.Now().UnixNano())
	mnt := filepath.Join(e.dir, "mnt")

	f := strings.Fields(e.mustWith(withS3, "open", url, "--size", "64M", "--s3-chunk-size", "1M", "--s3-cache-dir", filepath.Join(e.dir, "cache1")))
	if len(f) != 2 || f[1] != api.DiskID(url) {
		t.Fatalf("open printed %q, want the device and id %s", f, api.DiskID(url))
	}
	if m, err := chunked.Stat(context.Background(), srv.Store(t), strings.TrimPrefix(url, "s3://"+srv.Bucket+"/")); err != nil || m.ChunkSize != 1<<20 {
		t.Fatalf("the created image's manifest: %+v, %v; want 1 MiB chunks", m, err)
	}
	dev, id := f[0], f[1]
	l := listDisks(t, e)
	if len(l) != 1 || l[0].File != url || l[0].Via == api.ViaLoop || l[0].Size != 64<<20 || l[0].State != api.StateOpen {
		t.Fatalf("list: %+v, want %s open, 64 MiB", l, url)
	}
	t.Logf("attached %s via %s (%s)", dev, l[0].Via, l[0].ViaReason)
	if out := e.must("list"); !strings.Contains(out, url) {
		t.Fatalf("vdisk list does not show the URL:\n%s", out)
	}
	sh(t, "mkfs.ext4", "-q", "-F", dev)
	mount(t, dev, mnt)
	sums := writeFiles(t, mnt, 3<<20, 4096)
	sh(t, "sync", "-f", mnt)
	var open api.Disk
	if err := json.Unmarshal([]byte(e.must("info", "--json", id)), &open); err != nil {
		t.Fatal(err)
	}
	// (Not "nothing dirty": ext4's lazy inode-table init keeps writing.)
	if c := open.Cache; c == nil || c.StoredChunks == 0 {
		t.Fatalf("info of the open disk after sync: cache %+v, want chunks stored", c)
	}
	if out := e.must("info", id); !strings.Contains(out, "chunks in the store") {
		t.Fatalf("info does not show the cache:\n%s", out)
	}

	// Another daemon (its own socket and state) is refused while the
	// first holds the lease, with the holder named.
	t.Run("second writer", func(t *testing.T) {
		e2 := newEnv(t)
		pid := e.daemonPID()
		_, errs, code := e2.runWith(withS3, bin, "open", url, "--s3-cache-dir", filepath.Join(e2.dir, "cache"))
		if code == 0 || !strings.Contains(errs, "in use by") || !strings.Contains(errs, fmt.Sprintf(":%d", pid)) ||
			strings.Count(strings.TrimSpace(errs), "\n") != 0 {
			t.Fatalf("second open: exit %d, %q; want one line naming the holder (pid %d)", code, errs, pid)
		}
		t.Logf("second writer refused: %s", strings.TrimSpace(errs))
	})

	sh(t, "umount", mnt)
	e.must("close", url)
	if d := listDisks(t, e); len(d) != 0 {
		t.Fatalf("after close: %+v", d)
	}

	cache2 := filepath.Join(e.dir, "cache2")
	f = strings.Fields(e.mustWith(withS3, "open", url, "--s3-cache-dir", cache2))
	if len(f) != 2 || f[1] != id {
		t.Fatalf("reopen printed %q", f)
	}
	sh(t, "e2fsck", "-fn", f[0])
	mount(t, f[0], mnt)
	checkFiles(t, mnt, sums)
	sh(t, "umount", mnt)
	e.must("close", id)
	if _, err := os.Stat(cache2); err != nil {
		t.Fatalf("the fresh cache dir was not used: %v", err)
	}

	// info of the image, not open: its facts from the store.
	var im api.Image
	if err := json.Unmarshal([]byte(e.mustWith(withS3, "info", url, "--json")), &im); err != nil {
		t.Fatal(err)
	}
	if im.Open || im.File != url || im.ID != id || im.Size != 64<<20 || im.Format != "raw" {
		t.Fatalf("info: %+v", im)
	}
}

// testS3Restart: after kill -9 of the daemon, the next one keeps the s3://
// disk's endpoint (from the state file) and reports it locked, naming the
// dead daemon as the lease holder; once that lease expires it takes the
// disk back by itself, with every write fsynced before the kill.
func testS3Restart(t *testing.T, srv *s3test.Server) {
	e := newEnv(t)
	withS3 := s3Env(srv)
	url := fmt.Sprintf("s3://%s/e2e-restart-%d", srv.Bucket, time.Now().UnixNano())
	// The endpoint by flag only: the restarted daemon must take it from
	// the state file.
	cfg := srv.Config()
	creds := func(c *exec.Cmd) {
		c.Env = append(c.Env, "AWS_ACCESS_KEY_ID="+cfg.AccessKey, "AWS_SECRET_ACCESS_KEY="+cfg.SecretKey, "AWS_REGION="+cfg.Region)
	}
	f := strings.Fields(e.mustWith(creds, "open", url, "--size", "16M", "--s3-endpoint", srv.Endpoint))
	if len(f) != 2 {
		t.Fatalf("open printed %q", f)
	}
	ref := filepath.Join(e.dir, "ref.raw")
	if err := os.WriteFile(ref, make([]byte, 16<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	writePatterns(t, f[0], ref, []patternWrite{{0, 64 << 10, 'F'}, {5 << 20, 4096, 'G'}})
	pid := e.daemonPID()
	e.stopDaemon(pid, syscall.SIGKILL)
	st, err := os.ReadFile(filepath.Join(e.stateDir, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(st), srv.Endpoint) || strings.Contains(string(st), cfg.SecretKey) {
		t.Fatalf("state file: want the endpoint and no secret:\n%s", st)
	}
	list := func() []api.Disk {
		var l api.DiskList
		if err := json.Unmarshal([]byte(e.mustWith(creds, "list", "--json")), &l); err != nil {
			t.Fatal(err)
		}
		return l.Disks
	}
	// The new daemon finds the dead one's lease: locked, the holder named,
	// and taken back by itself once the lease expires.
	holder := fmt.Sprintf(":%d", pid)
	if l := list(); len(l) != 1 || l[0].File != url || l[0].State != api.StateLocked || !strings.Contains(l[0].Error, holder) ||
		!strings.Contains(l[0].Error, "taken back") {
		t.Fatalf("after restart: %+v, want %s locked by the dead daemon (%s), to be taken back", l, url, holder)
	}
	deadline := time.Now().Add(chunked.DefaultLeaseTTL + 30*time.Second)
	var l []api.Disk
	for l = list(); len(l) == 1 && l[0].State == api.StateLocked && time.Now().Before(deadline); l = list() {
		time.Sleep(500 * time.Millisecond)
	}
	if len(l) != 1 || l[0].State != api.StateOpen {
		t.Fatalf("after the lease expired: %+v, want the disk open again", l)
	}
	if !bytes.Equal(readFile(t, copyDevice(t, l[0].Device)), readFile(t, ref)) {
		t.Fatal("the disk taken back does not hold the data written before the kill")
	}
	e.mustWith(withS3, "close", url)
	if d := listDisks(t, e); len(d) != 0 {
		t.Fatalf("after close: %+v", d)
	}
}
