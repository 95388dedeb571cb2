package daemon

import (
	"context"
	"errors"
	"fmt"

	"vdisk/internal/api"
	"vdisk/internal/blockdev"
	"vdisk/internal/nbd/kernel"
)

// Resize grows the open disk id to size bytes while it stays attached and
// in use, the way losetup --set-capacity and qemu's block_resize do: the
// image grows first (a raw file, or a qcow2 image's virtual size), then
// the kernel's device takes the new size (a loop device: LOOP_SET_CAPACITY;
// FUSE: the exported file, then the loop device on it; nbd:
// NBD_CMD_RECONFIGURE). The file system on the disk is grown separately
// (resize2fs). An open disk only grows; ublk devices cannot change size on
// the kernels vdisk supports. It holds the image's lock; ctx bounds the
// wait for it (an open or close of the same image in flight).
func (d *Daemon) Resize(ctx context.Context, id string, size int64) (api.Disk, error) {
	return d.withDisk(ctx, id, func(dk *disk) (api.Disk, error) { return d.resize(dk, size) })
}

// resize grows the open disk dk to size bytes; the caller holds its
// image's lock.
func (d *Daemon) resize(dk *disk, size int64) (api.Disk, error) {
	switch {
	case dk.rec.State != api.StateOpen || dk.dev == nil:
		return api.Disk{}, api.Errorf(api.CodeBadRequest, "%s is %s, not open: close it, then resize the image", dk.rec.File, dk.rec.State)
	case size <= 0 || size%512 != 0:
		return api.Disk{}, api.Errorf(api.CodeBadRequest, "size %d is not a positive multiple of 512", size)
	}
	old := dk.dev.Size()
	r, resizable := dk.dev.(blockdev.Resizer)
	switch {
	case size == old:
		return dk.rec, nil
	case size < old:
		return api.Disk{}, api.Errorf(api.CodeBadRequest, "%s is open: an open disk only grows (%d to %d bytes would shrink it); close it and run vdisk resize --shrink", dk.rec.File, old, size)
	case dk.rec.ReadOnly:
		return api.Disk{}, api.Errorf(api.CodeBadRequest, "%s is open read-only", dk.rec.File)
	case api.IsURL(dk.rec.File):
		return api.Disk{}, api.Errorf(api.CodeUnsupported, "%s: an open disk in an object store cannot grow in place yet: close it, vdisk resize it, open it again", dk.rec.File)
	case dk.rec.Encrypted:
		return api.Disk{}, api.Errorf(api.CodeUnsupported, "%s: an open encrypted disk cannot grow in place yet: close it, vdisk resize it (no passphrase needed), open it again", dk.rec.File)
	case !resizable:
		return api.Disk{}, api.Errorf(api.CodeUnsupported, "%s: %s images cannot be resized (raw and qcow2 can)", dk.rec.File, dk.rec.Format)
	case dk.rec.Via == api.ViaUblk:
		return api.Disk{}, api.Errorf(api.CodeUnsupported, "%s is attached through ublk, whose devices cannot change size on this kernel: close it, vdisk resize it, open it again", dk.rec.File)
	}
	if err := r.Resize(size); err != nil {
		return api.Disk{}, fmt.Errorf("resize %s: %w", dk.rec.File, err)
	}
	if err := d.resizeKernel(dk, size); err != nil {
		// The image has grown; the device will show it when reopened.
		return api.Disk{}, fmt.Errorf("resize %s: the image is %d bytes now, but %s kept its size: %w", dk.rec.File, size, dk.rec.Device, err)
	}
	d.mu.Lock()
	dk.rec.Size, dk.rec.Sectors, dk.rec.Geometry = size, api.Sectors(size), api.CHS(size)
	v := dk.snapshot()
	d.mu.Unlock()
	rec := v.view()
	d.save()
	d.log.Info("resized", "id", dk.rec.ID, "file", dk.rec.File, "device", dk.rec.Device, "from", old, "to", size)
	return rec, nil
}

// resizeKernel makes dk's kernel device take the size its stack has now.
func (d *Daemon) resizeKernel(dk *disk, size int64) error {
	if dk.fuse != nil {
		if err := dk.fuse.Resize(size); err != nil {
			return err
		}
	}
	switch {
	case dk.loop != nil:
		got, err := dk.loop.SetCapacity()
		if err != nil {
			return err
		}
		if got != size {
			return fmt.Errorf("the loop device is %d bytes after LOOP_SET_CAPACITY", got)
		}
		return nil
	case dk.kern != nil && dk.rec.Via == api.ViaNBD:
		return kernel.Resize(dk.kern.Index(), nbdBackend(dk.rec.ID), size)
	}
	return errors.New("no kernel device to resize")
}
