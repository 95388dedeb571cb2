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
	"sync"
	"syscall"
	"time"

	"vdisk/internal/api"
	"vdisk/internal/blockdev"
	"vdisk/internal/stack"
)

// Restore re-opens the disks of the state file: a raw disk still attached
// to its loop device is adopted, an nbd or ublk disk takes back its device
// (reconfigure, user recovery) where the kernel still has it, any other is
// opened and attached again.
// A disk that cannot be restored stays in the registry in StateLocked,
// StateMissing or StateFailed with the reason, so that list shows it and
// close forgets it. Restore is called by Serve before the API answers.
// The disks are restored side by side, each under its image's lock and
// Options.OpenTimeout, so that one image whose storage does not answer
// delays the start by that timeout at most; ctx cancels them all.
func (d *Daemon) Restore(ctx context.Context) {
	sds, err := loadState(d.opt.StateDir)
	if err != nil {
		d.log.Error("cannot restore disks", "err", err)
		return
	}
	ctx, end, err := d.beginOp(ctx)
	if err != nil {
		return
	}
	defer end()
	d.sweepSnapshots(sds)
	var wg sync.WaitGroup
	for _, sd := range sds {
		sd.ID = api.DiskID(sd.File)
		if sd.Snapshot {
			wg.Go(func() { d.dropSnapshot(sd) })
			continue
		}
		wg.Go(func() { d.restoreLocked(ctx, sd) })
	}
	wg.Wait()
	d.save()
}

// restoreLocked restores one disk under its image's lock and records it.
func (d *Daemon) restoreLocked(ctx context.Context, sd stateDisk) {
	ctx, cancel := d.opContext(ctx)
	defer cancel()
	// Nothing else holds the lock at start but a restore of the same
	// disk named twice: wait for it even when cancelled, so that every
	// disk of the state file is recorded (failed, if cancelled) and kept.
	unlock, err := d.lockImage(context.WithoutCancel(ctx), sd.ID, sd.File)
	if err != nil {
		d.log.Error("could not restore disk", "id", sd.ID, "file", sd.File, "err", err)
		return
	}
	defer unlock()
	d.mu.Lock()
	_, dup := d.disks[sd.ID]
	d.mu.Unlock()
	if dup {
		d.log.Warn("the state file names a disk twice; restored once", "id", sd.ID, "file", sd.File)
		return
	}
	dk, err := d.restoreOne(ctx, sd)
	d.mu.Lock()
	d.disks[sd.ID] = dk
	d.mu.Unlock()
	if err != nil {
		d.log.Error("could not restore disk", "id", sd.ID, "file", sd.File, "state", dk.rec.State, "err", err)
		return
	}
	d.log.Info("restored", "id", sd.ID, "file", sd.File, "device", dk.rec.Device, "via", dk.rec.Via)
}

// restoreOne re-opens one disk; on failure the disk it returns records why.
func (d *Daemon) restoreOne(ctx context.Context, sd stateDisk) (*disk, error) {
	fail := func(state string, err error) (*disk, error) {
		return &disk{index: sd.Index, allowDiscards: sd.AllowDiscards, s3: sd.S3, rec: api.Disk{Encrypted: sd.Encrypted,
			ID: sd.ID, File: sd.File, Format: sd.Format, ReadOnly: sd.ReadOnly, Writable: !sd.ReadOnly,
			Via: sd.Via, ViaReason: sd.ViaReason, UniqueID: api.UniqueID(sd.File), OpenedAt: sd.OpenedAt, Hotplug: true,
			MediaType: api.MediaFixed, State: state, Error: err.Error(), BackingDirs: sd.BackingDirs, NoBacking: sd.NoBacking,
			CacheMode: sd.CacheMode, AIO: sd.AIO,
			Snapshot: sd.Snapshot, SnapshotDir: sd.SnapshotDir, Base: sd.Base, BaseFormat: sd.BaseFormat,
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
	dk, err := d.attach(ctx, sd, true, openOpts{})
	if errors.Is(err, blockdev.ErrLocked) {
		var le *stack.LeaseError
		if errors.As(err, &le) && d.retakeLater(sd, le) {
			err = fmt.Errorf("%w; its holder is gone, so it is taken back when the lease expires", err)
		}
		return fail(api.StateLocked, err)
	}
	if err != nil && ctx.Err() != nil {
		err = d.ctxError(ctx, "restore "+sd.File)
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
func (d *Daemon) retakeLater(sd stateDisk, le *stack.LeaseError) bool {
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
		case <-d.life.Done():
			return // shutting down
		case <-t.C:
		}
		ctx, end, err := d.beginOp(d.life)
		if err != nil {
			return
		}
		defer end()
		ctx, cancel := d.opContext(ctx)
		defer cancel()
		unlock, err := d.lockImage(ctx, sd.ID, sd.File)
		if err != nil {
			d.log.Error("could not take back disk after its lease expired", "id", sd.ID, "file", sd.File, "err", err)
			return
		}
		defer unlock()
		d.mu.Lock()
		cur, ok := d.disks[sd.ID]
		locked := ok && cur.rec.State == api.StateLocked
		d.mu.Unlock()
		if !locked {
			return // closed, or opened again by hand meanwhile
		}
		dk, err := d.attach(ctx, sd, true, openOpts{forceTakeover: true})
		if err != nil {
			if ctx.Err() != nil {
				err = d.ctxError(ctx, "take back "+sd.File)
			}
			d.log.Error("could not take back disk after its lease expired", "id", sd.ID, "file", sd.File, "err", err)
			return
		}
		d.mu.Lock()
		d.disks[sd.ID] = dk
		d.mu.Unlock()
		d.save()
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
