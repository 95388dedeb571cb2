package ublk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"vdisk/internal/blockdev"
)

// recoverWait bounds how long Recover waits for the kernel to finish
// quiescing a device whose server died.
const recoverWait = 30 * time.Second

// Recover attaches dev as the new server of /dev/ublkb<id>, a device served
// with Options.Recoverable whose server died (its I/O is queued meanwhile).
// dev must have the size the device was created with. The queues, depth
// and request size are the device's own; opt gives the workers and the
// logger. The
// requests the old server had not completed are reissued to dev.
func Recover(ctx context.Context, id int, dev blockdev.Device, opt Options) (*Disk, error) {
	if err := opt.Validate(); err != nil {
		return nil, err
	}
	if id < 0 {
		return nil, fmt.Errorf("ublk: bad device id %d", id)
	}
	ctrl, err := openControl()
	if err != nil {
		return nil, err
	}
	d := &Disk{ctrl: ctrl, dev: dev, stopFD: -1, log: opt.Logger, workers: opt.Workers, id: uint32(id)}
	d.features = ctrl.features()
	ctrl.encoded = d.features&featCmdIoctlEncode != 0
	if err := d.recover(ctx); err != nil {
		if d.stopFD >= 0 { // queues ran: stop them, leave the device for another try
			unix.Write(d.stopFD, []byte{1, 0, 0, 0, 0, 0, 0, 0})
			d.wg.Wait()
			unix.Close(d.stopFD)
		}
		if d.cdev != nil {
			d.cdev.Close()
		}
		ctrl.close()
		return nil, err
	}
	return d, nil
}

func (d *Disk) recover(ctx context.Context) error {
	var err error
	if d.info, err = d.ctrl.devInfo(d.id); err != nil {
		return err
	}
	if d.info.flags&featUserRecovery == 0 {
		return fmt.Errorf("ublk: device %d: %w", d.id, ErrNotRecoverable)
	}
	p, err := d.ctrl.getParams(d.id)
	if err != nil {
		return err
	}
	if size := uint64(d.dev.Size()); p.basic.devSectors<<sectorShift != size {
		return fmt.Errorf("ublk: device %d has %d bytes, the new Device %d", d.id, p.basic.devSectors<<sectorShift, size)
	}
	if err := d.startRecovery(ctx); err != nil {
		return err
	}
	if err := d.startQueues(ctx); err != nil {
		return err
	}
	return d.ctrl.endRecovery(d.id, os.Getpid())
}

// startRecovery sends START_USER_RECOVERY, retrying while the kernel is
// still quiescing the device or releasing the old server's files (EBUSY).
func (d *Disk) startRecovery(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, recoverWait)
	defer cancel()
	for {
		err := d.ctrl.startRecovery(d.id)
		if !errors.Is(err, unix.EBUSY) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (device %d is not quiesced after %v)", err, d.id, recoverWait)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Delete stops and deletes /dev/ublkb<id> whose server is gone: a device
// left behind by a crashed server that was not recoverable (its I/O fails)
// or that will not be recovered. A device that is already stopped is
// just deleted.
func Delete(id int) error {
	if id < 0 {
		return fmt.Errorf("ublk: bad device id %d", id)
	}
	ctrl, err := openControl()
	if err != nil {
		return err
	}
	ctrl.encoded = ctrl.features()&featCmdIoctlEncode != 0
	err = ctrl.stopDev(uint32(id))
	if err == nil {
		err = ctrl.delDev(uint32(id))
	}
	return errors.Join(err, ctrl.close())
}

// Available reports whether the kernel can serve ublk devices, and with
// which UBLK_F_* features; the error wraps ErrUnavailable when the driver
// is missing. It lets a caller choose an attach path without trying one.
func Available() (features uint64, err error) {
	ctrl, err := openControl()
	if err != nil {
		return 0, err
	}
	defer ctrl.close()
	return ctrl.features(), nil
}
