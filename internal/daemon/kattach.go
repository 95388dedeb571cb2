package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"vdisk/internal/api"
	"vdisk/internal/blockdev"
	"vdisk/internal/nbd"
	"vdisk/internal/nbd/kernel"
	"vdisk/internal/ublk"
)

// Settings of the nbd and ublk attach paths.
const (
	// attachTimeout bounds setting up (or taking back) one kernel device.
	attachTimeout = 2 * time.Minute
	// detachTimeout bounds the NBD server's shutdown (answering what is in
	// flight, flushing) after the kernel disconnected.
	detachTimeout = time.Minute
	// nbdConnections is the number of sockets of a /dev/nbdN (multi-conn):
	// the kernel spreads requests over them.
	nbdConnections = 2
	// nbdTimeout is how long the kernel lets a request wait for its reply
	// before it gives up on a connection; generous, so that a slow image
	// (a busy disk, an emulated machine) is not mistaken for a dead server.
	nbdTimeout = 2 * time.Minute
	// nbdDeadConnTimeout is how long the kernel holds the I/O of a
	// /dev/nbdN whose connections all died (the daemon crashed) for a
	// restarted daemon to reconfigure it, before failing it.
	nbdDeadConnTimeout = 2 * time.Minute
	// nbdExport is the export name the daemon's per-disk NBD server uses on
	// its socketpairs.
	nbdExport = "disk"
	// ublkQueues is the number of hardware queues of a /dev/ublkbN, each
	// with its own io_uring and OS thread.
	ublkQueues = 2
)

// kernelDisk is a device stack served to the kernel by the daemon itself
// (nbd or ublk). Close tears the device down, answers what is in flight,
// and flushes the Device; it does not close the Device.
type kernelDisk interface {
	Path() string
	Index() int
	Close() error
}

// nbdBackend is the backend identifier of disk id's /dev/nbdN: the kernel
// refuses to reconfigure the device with another one, so a restarted daemon
// cannot attach the wrong image to it.
func nbdBackend(id string) string { return "vdisk:" + id }

// nbdDisk is a Device stack served to /dev/nbdN over socketpairs.
type nbdDisk struct {
	srv *nbd.Server
	att *kernel.Attachment
}

var _ kernelDisk = (*nbdDisk)(nil)

func (n *nbdDisk) Path() string { return n.att.Path() }
func (n *nbdDisk) Index() int   { return n.att.Index() }

// Close disconnects the device (the kernel has every earlier request
// answered first), then shuts the server down, which flushes the Device.
func (n *nbdDisk) Close() error {
	err := n.att.Close()
	ctx, cancel := context.WithTimeout(context.Background(), detachTimeout)
	defer cancel()
	return errors.Join(err, n.srv.Shutdown(ctx))
}

// attachNBD serves dev to the kernel's NBD client. With adopt and a
// recorded index it first takes back that /dev/nbdN, which the previous
// daemon left waiting (Reconfigure); when the kernel no longer has it (it
// gave up, or the host rebooted) it connects a new device.
func (d *Daemon) attachNBD(ctx context.Context, sd stateDisk, dev blockdev.Device, adopt bool) (kernelDisk, error) {
	ctx, cancel := context.WithTimeout(ctx, attachTimeout)
	defer cancel()
	srv := &nbd.Server{
		Exports: []nbd.Export{{Name: nbdExport, Device: dev, ReadOnly: sd.ReadOnly}},
		Logger:  d.log.With("disk", sd.ID, "via", api.ViaNBD),
	}
	opt := kernel.AttachOptions{
		Export: nbdExport, Connections: nbdConnections, Index: -1,
		Timeout: nbdTimeout, DeadConnTimeout: nbdDeadConnTimeout, Backend: nbdBackend(sd.ID),
	}
	if adopt && sd.Index != nil {
		re := opt
		re.Index, re.Reattach = *sd.Index, true
		a, err := kernel.Attach(ctx, srv, re)
		if err == nil {
			d.log.Info("took back nbd device", "id", sd.ID, "device", a.Path())
			return &nbdDisk{srv: srv, att: a}, nil
		}
		d.log.Warn("could not take back nbd device; connecting a new one", "id", sd.ID, "device", kernel.Path(*sd.Index), "err", err)
	}
	a, err := kernel.Attach(ctx, srv, opt)
	if err != nil {
		return nil, fmt.Errorf("attach %s --via nbd: %w", sd.File, err)
	}
	return &nbdDisk{srv: srv, att: a}, nil
}

// ublkDisk is a Device stack served as /dev/ublkbN.
type ublkDisk struct{ *ublk.Disk }

var _ kernelDisk = ublkDisk{}

func (u ublkDisk) Index() int { return u.ID() }

// attachUblk serves dev through a new ublk device, recoverable where the
// kernel offers user recovery. With adopt and a recorded id it first
// recovers that /dev/ublkbN, whose I/O has waited since the previous daemon
// died; a device that cannot be recovered (created without recovery, gone)
// is deleted, and a new one is made.
func (d *Daemon) attachUblk(ctx context.Context, sd stateDisk, dev blockdev.Device, adopt bool) (kernelDisk, error) {
	ctx, cancel := context.WithTimeout(ctx, attachTimeout)
	defer cancel()
	opt := ublk.Options{Queues: ublkQueues, ReadOnly: sd.ReadOnly, Recoverable: true, Logger: d.log.With("disk", sd.ID, "via", api.ViaUblk)}
	if adopt && sd.Index != nil {
		u, err := ublk.Recover(ctx, *sd.Index, dev, opt)
		if err == nil {
			d.log.Info("recovered ublk device", "id", sd.ID, "device", u.Path())
			return ublkDisk{u}, nil
		}
		d.log.Warn("could not recover ublk device; making a new one", "id", sd.ID, "ublk_id", *sd.Index, "err", err)
		if errors.Is(err, ublk.ErrNotRecoverable) {
			// Its I/O fails already; delete it so no stale device stays.
			if err := ublk.Delete(*sd.Index); err != nil {
				d.log.Warn("delete unrecoverable ublk device", "ublk_id", *sd.Index, "err", err)
			}
		}
	}
	u, err := ublk.Serve(ctx, dev, opt)
	if err != nil {
		return nil, fmt.Errorf("attach %s --via ublk: %w", sd.File, err)
	}
	if !u.Recoverable() {
		d.log.Info("the kernel offers no ublk user recovery: the device will not survive a daemon crash", "id", sd.ID, "device", u.Path())
	}
	return ublkDisk{u}, nil
}

// releaseKernelDisk makes what the kernel holds of a disk served by the
// daemon durable and takes the device away. A device in use (mounted, or
// held open exclusively) fails with CodeBusy unless force: then it is torn
// down under its users, whose I/O fails from then on (a kernel device the
// daemon serves cannot be detached lazily: it needs its server).
func releaseKernelDisk(rec api.Disk, k kernelDisk, force bool) error {
	fd, err := unix.Open(k.Path(), unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.EBUSY) {
		if !force {
			return api.Errorf(api.CodeBusy, "%s (%s) is in use (mounted or open); unmount it, or close with --force to tear it down under its users", rec.Device, rec.File)
		}
		fd, err = unix.Open(k.Path(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	}
	if err == nil {
		// Write back what sits in the device's page cache (a user that
		// wrote without fsync) and flush it through to the image.
		err = unix.Fsync(fd)
		unix.Close(fd)
		if err != nil && !force {
			return fmt.Errorf("sync %s: %w", rec.Device, err)
		}
	}
	if err := k.Close(); err != nil {
		return fmt.Errorf("detach %s: %w", rec.Device, err)
	}
	return nil
}

// releaseStaleNBD disconnects /dev/nbd<index>, left waiting by a daemon
// that died, when it still belongs to disk id (its backend identifier
// says so): a disk that could not be restored is being closed, and nobody
// will serve the device again. A device that belongs to someone else, or
// is gone, is left alone. Failures are logged: closing forgets the disk
// either way.
func (d *Daemon) releaseStaleNBD(id string, index int) {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(kernel.Path(index)), "backend"))
	if err != nil || strings.TrimSpace(string(b)) != nbdBackend(id) {
		return
	}
	if err := kernel.Disconnect(index); err != nil {
		d.log.Warn("disconnect the nbd device of a disk not restored", "id", id, "device", kernel.Path(index), "err", err)
		return
	}
	d.log.Info("disconnected the nbd device of a disk not restored", "id", id, "device", kernel.Path(index))
}
