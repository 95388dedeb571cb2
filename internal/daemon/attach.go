package daemon

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"vdisk/internal/api"
	"vdisk/internal/blockdev"
	"vdisk/internal/loop"
)

// attach opens the image of sd as a Device stack and attaches it to the
// kernel the way sd says (sd.Via empty: the format's default). With adopt
// (a restart), a raw image still attached to a loop device is taken over
// as it is, and a FUSE disk's stale mount and loop device are cleared
// first. The caller holds opMu.
func (d *Daemon) attach(sd stateDisk, adopt bool) (*disk, error) {
	var adopted *loop.Device
	if adopt && (sd.Via == api.ViaLoop || sd.Via == "") {
		devs, err := loop.FindByBackingFile(sd.File)
		if err != nil {
			return nil, err
		}
		if len(devs) > 0 {
			adopted = devs[0]
			for _, l := range devs {
				if l.Path == sd.Device {
					adopted = l
				}
			}
		}
	}
	// An adopted loop device keeps the previous daemon's locked open file:
	// the lock is ours already.
	dev, format, err := openImage(sd.File, sd.Format, sd.ReadOnly, adopted != nil, d.log)
	if err != nil {
		return nil, err
	}
	via := sd.Via
	if via == "" {
		via = defaultVia(format)
	}
	dk := &disk{dev: dev}
	switch via {
	case api.ViaLoop:
		f, ok := dev.(*blockdev.File)
		if !ok {
			dev.Close()
			return nil, api.Errorf(api.CodeBadVia, "%s is a %s image: it can only be attached --via fuse", sd.File, format)
		}
		if adopted != nil {
			dk.loop = adopted
			d.log.Info("adopted loop device", "file", sd.File, "device", adopted.Path)
		} else if dk.loop, err = attachLoop(f, sd.ReadOnly); err != nil {
			dev.Close()
			return nil, err
		}
	case api.ViaFUSE:
		if adopt {
			d.clearStaleFUSE(sd)
		}
		if dk.fuse, dk.loop, err = d.attachFUSE(sd.ID, dev, sd.ReadOnly); err != nil {
			dev.Close()
			return nil, err
		}
	}
	dk.rec = record(sd, dev, format, via, dk.loop)
	return dk, nil
}

// attachLoop attaches the raw image file f to a free loop device with
// direct I/O (where the file system allows) and partition scanning. The
// device shares f's open file description, and so its lock.
func attachLoop(f *blockdev.File, readOnly bool) (*loop.Device, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("attach %s: dup: %w", f.Path(), err)
	}
	of := os.NewFile(uintptr(fd), f.Path())
	defer of.Close()
	return loop.Attach(of, loop.Options{ReadOnly: readOnly, DirectIO: true, PartScan: true})
}

// record builds the API record of an open disk.
func record(sd stateDisk, dev blockdev.Device, format, via string, l *loop.Device) api.Disk {
	info := blockdev.InfoOf(dev)
	ro := sd.ReadOnly || info.ReadOnly || (l != nil && l.ReadOnly)
	size := dev.Size()
	media := api.MediaFixed
	if format == formatISO {
		media = api.MediaCDROM
	}
	r := api.Disk{
		ID:                sd.ID,
		File:              sd.File,
		Format:            format,
		Size:              size,
		Sectors:           api.Sectors(size),
		LogicalBlockSize:  info.LogicalBlockSize,
		PhysicalBlockSize: info.PhysicalBlockSize,
		Geometry:          api.CHS(size),
		ReadOnly:          ro,
		Writable:          !ro,
		Via:               via,
		Removable:         media == api.MediaCDROM,
		Hotplug:           true,
		MediaType:         media,
		UniqueID:          api.UniqueID(sd.File),
		OpenedAt:          sd.OpenedAt,
		State:             api.StateOpen,
	}
	if l != nil {
		r.Device = l.Path
		r.Major, r.Minor = l.Major, l.Minor
		r.DevNo = fmt.Sprintf("%d:%d", l.Major, l.Minor)
		if l.BlockSize != 0 {
			r.LogicalBlockSize = l.BlockSize
		}
	}
	return r
}
