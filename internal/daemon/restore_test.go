package daemon

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"vdisk/internal/api"
)

func TestRestoreAdoptsLoop(t *testing.T) {
	needKernel(t)
	ctx := context.Background()
	first := startDaemon(t, "")
	file := filepath.Join(first.dir, "a.img")
	d, err := first.c.Open(ctx, api.OpenRequest{File: file, Create: true, Size: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	// A second daemon on the same state, as after a crash of the first:
	// it adopts the loop device the first one attached.
	second := startDaemon(t, first.stateDir)
	got, err := second.c.Disk(ctx, d.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != api.StateOpen || got.Device != d.Device || !got.OpenedAt.Equal(d.OpenedAt) || got.Via != api.ViaLoop {
		t.Fatalf("restored %+v, want the adopted %s", got, d.Device)
	}
	if _, err := second.c.CloseDisk(ctx, d.ID, false); err != nil {
		t.Fatal(err)
	}
	first.stop() // finds its loop device already detached
}

func TestRestoreFailures(t *testing.T) {
	needKernel(t)
	ctx := context.Background()
	stateDir := t.TempDir()
	dir := t.TempDir()
	locked := filepath.Join(dir, "locked.img")
	if err := os.WriteFile(locked, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	lf, err := os.Open(locked)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.img")
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := saveState(stateDir, []stateDisk{
		{File: locked, Format: "raw", Via: api.ViaLoop, OpenedAt: at},
		{File: missing, Format: "raw", Via: api.ViaLoop, OpenedAt: at},
	}); err != nil {
		t.Fatal(err)
	}
	td := startDaemon(t, stateDir)
	l, err := td.c.List(ctx)
	if err != nil || len(l) != 2 {
		t.Fatalf("list: %+v, %v", l, err)
	}
	want := map[string]string{locked: api.StateLocked, missing: api.StateMissing}
	for _, d := range l {
		if d.State != want[d.File] || d.Error == "" || d.Device != "" || d.ID != api.DiskID(d.File) || !d.OpenedAt.Equal(at) {
			t.Errorf("restored %+v, want state %s with a reason", d, want[d.File])
		}
	}
	if !strings.Contains(l[0].Error, "locked") {
		t.Errorf("locked reason %q", l[0].Error)
	}
	// Once the lock is gone, opening again replaces the failed record.
	lf.Close()
	d, err := td.c.Open(ctx, api.OpenRequest{File: locked})
	if err != nil || d.State != api.StateOpen {
		t.Fatalf("reopen: %+v, %v", d, err)
	}
	// Closing a disk that was not restored forgets it.
	if _, err := td.c.CloseDisk(ctx, api.DiskID(missing), false); err != nil {
		t.Fatal(err)
	}
	sds, err := loadState(stateDir)
	if err != nil || len(sds) != 1 || sds[0].File != locked {
		t.Fatalf("state: %+v, %v", sds, err)
	}
}

func TestShutdownClosesAll(t *testing.T) {
	needKernel(t)
	ctx := context.Background()
	td := startDaemon(t, "")
	var files []string
	for _, name := range []string{"a.img", "b.img", "c.img"} {
		f := filepath.Join(td.dir, name)
		via := api.ViaLoop
		if name == "b.img" && checkFUSE() == nil {
			via = api.ViaFUSE
		}
		if _, err := td.c.Open(ctx, api.OpenRequest{File: f, Create: true, Size: 2 << 20, Via: via}); err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	td.stop()
	if sds, err := loadState(td.stateDir); err != nil || len(sds) != 0 {
		t.Fatalf("state after shutdown: %+v, %v", sds, err)
	}
	for _, f := range files {
		// Every image is closed: its lock is free again.
		h, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Flock(int(h.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			t.Errorf("%s still locked after shutdown: %v", f, err)
		}
		h.Close()
	}
}

// TestRestoreKeepsTrust: the directories an open trusted for the files the
// image names, and NoBacking, are kept in the state file, and a restarted
// daemon reopens the disk with them and shows them.
func TestRestoreKeepsTrust(t *testing.T) {
	needKernel(t)
	ctx := context.Background()
	first := startDaemon(t, "")
	base := filepath.Join(first.dir, "base")
	if err := os.Mkdir(base, 0o700); err != nil {
		t.Fatal(err)
	}
	req := api.OpenRequest{File: filepath.Join(first.dir, "a.img"), Create: true, Size: 1 << 20,
		BackingDirs: []string{base + "/", base}, NoBacking: true}
	d, err := first.c.Open(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(d.BackingDirs, []string{base}) || !d.NoBacking {
		t.Fatalf("opened with backing dirs %q, no backing %v; want [%s], true", d.BackingDirs, d.NoBacking, base)
	}
	sds, err := loadState(first.stateDir)
	if err != nil || len(sds) != 1 || !slices.Equal(sds[0].BackingDirs, []string{base}) || !sds[0].NoBacking {
		t.Fatalf("state %+v, %v", sds, err)
	}
	second := startDaemon(t, first.stateDir)
	got, err := second.c.Disk(ctx, d.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != api.StateOpen || !slices.Equal(got.BackingDirs, []string{base}) || !got.NoBacking {
		t.Fatalf("restored %+v", got)
	}
	if _, err := second.c.CloseDisk(ctx, d.ID, false); err != nil {
		t.Fatal(err)
	}
	first.stop()
}
