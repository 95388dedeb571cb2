package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"vdisk/internal/api"
	"vdisk/internal/blockdev"
	"vdisk/internal/storage/chunked"
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
		var le *chunked.LeaseError
		if errors.As(err, &le) && d.retakeLater(sd, le) {
			err = fmt.Errorf("%w; its holder is gone, so it is taken back when the lease expires", err)
		}
		return fail(api.StateLocked, err)
	}
	if err != nil {
		return fail(api.StateFailed, err)
	}
	return dk, nil
}

// maxRetakeWait bounds how long retakeLater waits for a lease to expire.
const maxRetakeWait = 10 * time.Minute

// retakeLater takes an s3:// disk back once its lease expires, when the
// lease's holder was a process on this host that is gone (the previous
// daemon, killed): nothing else can hold the disk, and after expiry even
// a holder that is somehow alive has stopped writing (a writer stops
// before its lease runs out), which is what makes --force-takeover safe.
// It reports whether it will try.
func (d *Daemon) retakeLater(sd stateDisk, le *chunked.LeaseError) bool {
	i := strings.LastIndexByte(le.Holder, ':')
	host, _ := os.Hostname()
	if i < 0 || le.Holder[:i] != host {
		return false
	}
	pid, err := strconv.Atoi(le.Holder[i+1:])
	if err != nil || pid <= 0 || processAlive(pid) {
		return false
	}
	wait := time.Until(le.Expires) + time.Second
	if wait > maxRetakeWait {
		return false
	}
	d.background.Add(1)
	go func() {
		defer d.background.Done()
		t := time.NewTimer(max(wait, 0))
		defer t.Stop()
		select {
		case <-d.stop:
			return
		case <-t.C:
		}
		d.opMu.Lock()
		defer d.opMu.Unlock()
		d.mu.Lock()
		cur, ok := d.disks[sd.ID]
		closing := d.closing
		d.mu.Unlock()
		if closing || !ok || cur.rec.State != api.StateLocked {
			return // closed, or opened again by hand meanwhile
		}
		dk, err := d.attach(sd, true, openOpts{forceTakeover: true})
		if err != nil {
			d.log.Error("could not take back disk after its lease expired", "id", sd.ID, "file", sd.File, "err", err)
			return
		}
		d.mu.Lock()
		d.disks[sd.ID] = dk
		d.mu.Unlock()
		d.saveLocked()
		d.log.Info("restored after the dead holder's lease expired", "id", sd.ID, "file", sd.File, "device", dk.rec.Device, "holder", le.Holder)
	}()
	return true
}

// processAlive reports whether a process with this pid exists and is not
// a zombie (killed, not yet reaped: it holds nothing any more).
func processAlive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true // cannot tell: assume alive
	}
	// The state follows the command name in parentheses, which may
	// itself hold parentheses.
	if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) {
		return b[i+2] != 'Z'
	}
	return true
}
