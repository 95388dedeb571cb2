package daemon

import (
	"context"
	"errors"
	"io/fs"
	"os"

	"vdisk/internal/api"
	"vdisk/internal/blockdev"
)

// Restore re-opens the disks of the state file: a raw disk still attached
// to its loop device is adopted, an nbd or ublk disk takes back its device
// (reconfigure, user recovery) where the kernel still has it, any other is
// opened and attached again.
// A disk that cannot be restored stays in the registry in StateLocked,
// StateMissing or StateFailed with the reason, so that list shows it and
// close forgets it. Restore is called by Serve before the API answers.
func (d *Daemon) Restore(ctx context.Context) {
	sds, err := loadState(d.opt.StateDir)
	if err != nil {
		d.log.Error("cannot restore disks", "err", err)
		return
	}
	d.opMu.Lock()
	defer d.opMu.Unlock()
	for _, sd := range sds {
		if ctx.Err() != nil {
			break
		}
		sd.ID = api.DiskID(sd.File)
		dk, err := d.restoreOne(sd)
		d.mu.Lock()
		d.disks[sd.ID] = dk
		d.mu.Unlock()
		if err != nil {
			d.log.Error("could not restore disk", "id", sd.ID, "file", sd.File, "state", dk.rec.State, "err", err)
			continue
		}
		d.log.Info("restored", "id", sd.ID, "file", sd.File, "device", dk.rec.Device, "via", dk.rec.Via)
	}
	d.saveLocked()
}

// restoreOne re-opens one disk; on failure the disk it returns records why.
func (d *Daemon) restoreOne(sd stateDisk) (*disk, error) {
	fail := func(state string, err error) (*disk, error) {
		return &disk{index: sd.Index, allowDiscards: sd.AllowDiscards, s3: sd.S3, rec: api.Disk{Encrypted: sd.Encrypted,
			ID: sd.ID, File: sd.File, Format: sd.Format, ReadOnly: sd.ReadOnly, Writable: !sd.ReadOnly,
			Via: sd.Via, ViaReason: sd.ViaReason, UniqueID: api.UniqueID(sd.File), OpenedAt: sd.OpenedAt, Hotplug: true,
			MediaType: api.MediaFixed, State: state, Error: err.Error(),
		}}, err
	}
	if !api.IsURL(sd.File) {
		if _, err := os.Stat(sd.File); errors.Is(err, fs.ErrNotExist) {
			return fail(api.StateMissing, err)
		}
	}
	if sd.Encrypted {
		// The passphrase went with the previous daemon; it is never
		// stored.
		return fail(api.StateLocked, ErrEncryptedLocked)
	}
	dk, err := d.attach(sd, true, openOpts{})
	if errors.Is(err, blockdev.ErrLocked) {
		return fail(api.StateLocked, err)
	}
	if err != nil {
		return fail(api.StateFailed, err)
	}
	return dk, nil
}
