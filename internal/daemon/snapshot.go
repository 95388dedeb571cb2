package daemon

import (
	"context"
	"os"
	"path/filepath"

	"vdisk/internal/api"
	"vdisk/internal/stack"
)

// checkSnapshot refuses snapshot and overlay requests that cannot be
// served.
func checkSnapshot(req api.OpenRequest) error {
	switch {
	case req.SnapshotDir != "" && !req.Snapshot:
		return api.Errorf(api.CodeBadRequest, "a snapshot directory goes with a snapshot")
	case req.Snapshot && req.Base != "":
		return api.Errorf(api.CodeBadRequest, "a snapshot and an overlay exclude each other")
	case req.Base != "" && api.IsURL(req.File):
		return api.Errorf(api.CodeBadRequest, "an overlay is a local qcow2 file, not %s (its base may be s3://)", req.File)
	case req.Base != "" && !api.IsURL(req.Base) && !filepath.IsAbs(req.Base):
		return api.Errorf(api.CodeBadRequest, "base image %q is not an absolute path", req.Base)
	case req.SnapshotDir != "" && !filepath.IsAbs(req.SnapshotDir):
		return api.Errorf(api.CodeBadRequest, "snapshot directory %q is not an absolute path", req.SnapshotDir)
	}
	if req.SnapshotDir != "" {
		if fi, err := os.Stat(req.SnapshotDir); err != nil || !fi.IsDir() {
			return api.Errorf(api.CodeBadRequest, "snapshot directory %s is not a directory", req.SnapshotDir)
		}
	}
	return nil
}

// sweepSnapshots removes the named overlay files that a daemon killed
// between creating and unlinking one left behind (only where the file
// system refuses O_TMPFILE), in $TMPDIR and the snapshot directories of
// the state file.
func (d *Daemon) sweepSnapshots(sds []stateDisk) {
	dirs := map[string]bool{stack.SnapshotDir(""): true}
	for _, sd := range sds {
		if sd.Snapshot {
			dirs[stack.SnapshotDir(sd.SnapshotDir)] = true
		}
	}
	for dir := range dirs {
		gone, err := stack.SweepSnapshots(dir)
		if err != nil {
			d.log.Debug("sweep snapshot overlays", "dir", dir, "err", err)
		}
		for _, name := range gone {
			d.log.Info("removed the snapshot overlay a dead process left", "file", name)
		}
	}
}

// dropSnapshot forgets a snapshot disk of the state file. Its writes lived
// in an overlay that only the previous daemon's open file held, gone with
// it: reattaching the image would serve it without the writes the client
// made (stale data) or let them reach an image that was to stay
// unchanged. So the disk is dropped, and the device it left (a dead FUSE
// mount and its loop device, an nbd device) is freed.
func (d *Daemon) dropSnapshot(sd stateDisk) {
	unlock, err := d.lockImage(context.Background(), sd.ID, sd.File)
	if err != nil {
		d.log.Error("could not drop snapshot disk", "id", sd.ID, "file", sd.File, "err", err)
		return
	}
	defer unlock()
	dk := &disk{index: sd.Index, rec: api.Disk{ID: sd.ID, File: sd.File, Format: sd.Format, Via: sd.Via,
		Device: sd.Device, State: api.StateFailed, Snapshot: true}}
	if err := d.closeDisk(dk, true); err != nil {
		d.log.Error("could not free the device of a dropped snapshot disk", "id", sd.ID, "file", sd.File, "device", sd.Device, "err", err)
	}
	d.log.Warn("dropped snapshot disk: its throw-away writes went with the previous daemon, and its image was never written",
		"id", sd.ID, "file", sd.File, "device", sd.Device, "via", sd.Via)
}
