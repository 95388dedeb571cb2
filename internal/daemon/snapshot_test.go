package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"vdisk/internal/api"
)

// TestRestoreDropsSnapshot: a snapshot disk in the state file is not
// reattached after a restart (its overlay went with the old daemon): it
// is dropped, and so is it from the state file, while other disks are
// restored; a dead process's named overlay in its directory is swept.
func TestRestoreDropsSnapshot(t *testing.T) {
	needKernel(t)
	ctx := context.Background()
	stateDir, dir, snapDir := t.TempDir(), t.TempDir(), t.TempDir()
	snap := filepath.Join(dir, "snap.img")
	if err := os.WriteFile(snap, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	leftover := filepath.Join(snapDir, ".vdisk-snapshot-2147483646-00")
	if err := os.WriteFile(leftover, []byte("stale"), 0o600); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := saveState(stateDir, []stateDisk{
		{File: snap, Format: "raw", Via: api.ViaFUSE, OpenedAt: at, Snapshot: true, SnapshotDir: snapDir, Device: "/dev/loop99"},
	}); err != nil {
		t.Fatal(err)
	}
	td := startDaemon(t, stateDir)
	l, err := td.c.List(ctx)
	if err != nil || len(l) != 0 {
		t.Fatalf("list after restart: %+v, %v; want the snapshot disk dropped", l, err)
	}
	sds, err := loadState(stateDir)
	if err != nil || len(sds) != 0 {
		t.Fatalf("state after restart: %+v, %v", sds, err)
	}
	if _, err := os.Stat(leftover); !os.IsNotExist(err) {
		t.Fatalf("the dead process's overlay is still there: %v", err)
	}
	b, err := os.ReadFile(snap)
	if err != nil || strings.Trim(string(b), "\x00") != "" {
		t.Fatalf("the image changed: %v", err)
	}
}

// TestOpenSnapshotRequests refuses what a snapshot or overlay request
// cannot mean.
func TestOpenSnapshotRequests(t *testing.T) {
	for _, req := range []api.OpenRequest{
		{File: "/x.img", SnapshotDir: "/tmp"},
		{File: "/x.img", Snapshot: true, Base: "/y.img"},
		{File: "/x.img", Snapshot: true, SnapshotDir: "rel"},
		{File: "/x.img", Snapshot: true, SnapshotDir: "/nonexistent-dir-of-vdisk"},
		{File: "s3://b/p", Base: "/y.img"},
		{File: "/x.qcow2", Base: "rel.img"},
	} {
		if err := checkSnapshot(req); err == nil {
			t.Errorf("%+v accepted", req)
		} else {
			wantCode(t, err, api.CodeBadRequest)
		}
	}
	for _, req := range []api.OpenRequest{
		{File: "/x.img", Snapshot: true},
		{File: "/x.img", Snapshot: true, SnapshotDir: t.TempDir()},
		{File: "/x.qcow2", Base: "/y.img"},
		{File: "/x.qcow2", Base: "s3://b/p"},
	} {
		if err := checkSnapshot(req); err != nil {
			t.Errorf("%+v: %v", req, err)
		}
	}
}
