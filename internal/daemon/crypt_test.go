package daemon

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"vdisk/internal/api"
	"vdisk/internal/crypt/luks"
	"vdisk/internal/stack"
)

// testPass is the passphrase of the encrypted test images.
const testPass = "correct horse battery staple"

// makeEncrypted creates a LUKS2 raw image of size (decrypted) bytes with a
// cheap KDF and returns its path.
func makeEncrypted(t *testing.T, dir string, size int64) string {
	t.Helper()
	name := filepath.Join(dir, "secret.img")
	err := stack.Create(context.Background(), name, stack.CreateOptions{Size: size, Encrypt: stack.EncryptOptions{
		Type: "luks2", Passphrase: []byte(testPass),
		LUKS: luks.FormatOptions{PBKDF: luks.PBKDFOptions{Type: "pbkdf2", Iterations: 1000}, DigestIterations: 1000},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return name
}

// TestOpenEncrypted opens a LUKS image through the daemon: without a
// passphrase it asks for one (CodePassphraseRequired), a wrong one has its
// own code, the right one attaches the decrypted disk through FUSE, and the
// state file records "encrypted" but never the passphrase.
func TestOpenEncrypted(t *testing.T) {
	needKernel(t)
	ctx := context.Background()
	td := startDaemonProbe(t, "", func() kernelPaths { return neither })
	file := makeEncrypted(t, td.dir, 4<<20)

	_, err := td.c.Open(ctx, api.OpenRequest{File: file})
	wantCode(t, err, api.CodePassphraseRequired)
	_, err = td.c.Open(ctx, api.OpenRequest{File: file, Passphrase: []byte("wrong")})
	if e := wantCode(t, err, api.CodeWrongPassphrase); bytes.Contains([]byte(e.Message), []byte("\n")) {
		t.Errorf("wrong passphrase message %q is not one line", e.Message)
	}
	if l, _ := td.c.List(ctx); len(l) != 0 {
		t.Fatalf("failed opens left disks: %+v", l)
	}

	d, err := td.c.Open(ctx, api.OpenRequest{File: file, Passphrase: []byte(testPass), AllowDiscards: true})
	if err != nil {
		t.Fatal(err)
	}
	if !d.Encrypted || d.Via != api.ViaFUSE || d.Size != 4<<20 || d.State != api.StateOpen {
		t.Fatalf("opened %+v, want an encrypted 4 MiB disk via fuse", d)
	}
	// The decrypted disk is what the device shows: write, read back.
	want := bytes.Repeat([]byte("plaintext!"), 400)
	f, err := os.OpenFile(d.Device, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(want, 1<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if got := readAllAt(t, d.Device, 1<<20, len(want)); !bytes.Equal(got, want) {
		t.Fatal("device reads back other data")
	}

	st, err := os.ReadFile(filepath.Join(td.stateDir, stateFileName))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(st, []byte(testPass)) || bytes.Contains(st, []byte("passphrase")) {
		t.Fatalf("state file holds the passphrase:\n%s", st)
	}
	sds, err := loadState(td.stateDir)
	if err != nil || len(sds) != 1 || !sds[0].Encrypted || !sds[0].AllowDiscards {
		t.Fatalf("state %+v, %v: want one encrypted disk with allow_discards", sds, err)
	}

	if _, err := td.c.CloseDisk(ctx, d.ID, false); err != nil {
		t.Fatal(err)
	}
	img, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(img, want[:40]) {
		t.Fatal("the image file holds the plaintext")
	}
}

// TestRestoreEncryptedLocked: a restarted daemon reports an encrypted disk
// locked with the reason, opening it again with the passphrase unlocks and
// attaches it, and closing a locked disk forgets it.
func TestRestoreEncryptedLocked(t *testing.T) {
	needKernel(t)
	ctx := context.Background()
	stateDir := t.TempDir()
	file := makeEncrypted(t, t.TempDir(), 4<<20)
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := saveState(stateDir, []stateDisk{{File: file, Format: "raw", Via: api.ViaFUSE, Encrypted: true, OpenedAt: at}}); err != nil {
		t.Fatal(err)
	}
	td := startDaemonProbe(t, stateDir, func() kernelPaths { return neither })
	id := api.DiskID(file)
	got, err := td.c.Disk(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != api.StateLocked || !got.Encrypted || got.Device != "" || got.Error != ErrEncryptedLocked.Error() {
		t.Fatalf("restored %+v, want locked: %q", got, ErrEncryptedLocked)
	}
	_, err = td.c.Open(ctx, api.OpenRequest{File: file})
	wantCode(t, err, api.CodePassphraseRequired)
	d, err := td.c.Open(ctx, api.OpenRequest{File: file, Passphrase: []byte(testPass)})
	if err != nil {
		t.Fatal(err)
	}
	if d.State != api.StateOpen || d.Device == "" || !d.Encrypted || !d.OpenedAt.Equal(at) || d.Via != api.ViaFUSE {
		t.Fatalf("unlocked %+v", d)
	}
	if _, err := td.c.CloseDisk(ctx, id, false); err != nil {
		t.Fatal(err)
	}

	// Closing a locked disk forgets it.
	td.stop()
	if err := saveState(stateDir, []stateDisk{{File: file, Format: "raw", Via: api.ViaFUSE, Encrypted: true, OpenedAt: at}}); err != nil {
		t.Fatal(err)
	}
	td2 := startDaemonProbe(t, stateDir, func() kernelPaths { return neither })
	if _, err := td2.c.CloseDisk(ctx, id, false); err != nil {
		t.Fatal(err)
	}
	if l, err := td2.c.List(ctx); err != nil || len(l) != 0 {
		t.Fatalf("after closing the locked disk: %+v, %v", l, err)
	}
	if sds, err := loadState(stateDir); err != nil || len(sds) != 0 {
		t.Fatalf("state after close: %+v, %v", sds, err)
	}
}

// TestStateKeepsS3Options: the object store options of an s3:// disk are
// kept (without ForceTakeover), and URLs are valid files in the state.
func TestStateKeepsS3Options(t *testing.T) {
	dir := t.TempDir()
	url := "s3://bucket/disks/one"
	in := []stateDisk{{ID: api.DiskID(url), File: url, Format: "raw", Via: api.ViaFUSE, S3: &api.S3Options{Endpoint: "http://127.0.0.1:9000", CacheDir: "/var/cache/x"}}}
	if err := saveState(dir, in); err != nil {
		t.Fatal(err)
	}
	out, err := loadState(dir)
	if err != nil || len(out) != 1 || out[0].File != url || out[0].S3 == nil || *out[0].S3 != *in[0].S3 {
		t.Fatalf("loaded %+v, %v", out, err)
	}
}

// TestListDegraded: an open disk whose Device reports a failing backend is
// listed StateDegraded with the reason, and open again once it recovers;
// the registry's record itself stays open.
func TestListDegraded(t *testing.T) {
	d, err := New(Options{Socket: filepath.Join(t.TempDir(), "s"), StateDir: t.TempDir(), Logger: logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	var fault error
	url := "s3://bucket/disk"
	d.disks[api.DiskID(url)] = &disk{
		rec:      api.Disk{ID: api.DiskID(url), File: url, Device: "/dev/loop9", State: api.StateOpen},
		degraded: func() error { return fault },
	}
	check := func(state, reason string) {
		t.Helper()
		l := d.List()
		g, err := d.Get(api.DiskID(url))
		if err != nil || len(l) != 1 || l[0].State != state || l[0].Error != reason || g.State != state || l[0].Device != "/dev/loop9" {
			t.Fatalf("list %+v, get %+v (%v); want %s %q", l, g, err, state, reason)
		}
	}
	check(api.StateOpen, "")
	fault = errors.New("put chunk 0: connection refused")
	check(api.StateDegraded, fault.Error())
	if d.disks[api.DiskID(url)].rec.State != api.StateOpen {
		t.Fatal("the record itself changed")
	}
	fault = nil
	check(api.StateOpen, "")
}
