package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"vdisk/internal/api"
	"vdisk/internal/blockdev"
	"vdisk/internal/loop"
	"vdisk/internal/metrics"
)

// How often, and how long apart, attach tries again to open an image that
// a stale FUSE disk's loop device (passed through to the image file) kept
// locked after it was detached: up to 5 s in all.
const (
	staleLockTries = 100
	staleLockWait  = 50 * time.Millisecond
)

// attach opens the image of sd as a Device stack and attaches it to the
// kernel the way sd says (sd.Via empty: the best path the kernel has, see
// chooseVia). With adopt (a restart), a raw image still attached to a loop
// device is taken over as it is, a FUSE disk's stale mount and loop device
// are cleared first, and an nbd or ublk disk takes back the device the
// previous daemon left waiting. The caller holds the image's lock; ctx
// bounds the opening and the kernel device's setup.
func (d *Daemon) attach(ctx context.Context, sd stateDisk, adopt bool, o openOpts) (*disk, error) {
	var paths kernelPaths
	switch sd.Via {
	case "":
		paths = d.probe()
	case api.ViaNBD, api.ViaUblk:
		// Fail before opening (and locking) the image.
		if err := checkVia(sd.Via, d.probe()); err != nil {
			return nil, err
		}
	}
	var adopted *loop.Device
	if adopt && !sd.Encrypted && !api.IsURL(sd.File) && (sd.Via == api.ViaLoop || sd.Via == "") {
		if devs := d.findLoops(sd.File); len(devs) > 0 {
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
	o.noLock = adopted != nil
	if d.metrics != nil {
		o.observe, o.onRetry = d.metrics.StoreObserver(), d.metrics.StoreRetries()
	}
	// A FUSE disk's stale loop device and mount go before the image is
	// opened: under FUSE passthrough the kernel keeps the previous
	// daemon's open image file (and its lock) for as long as they live,
	// and they still write the image.
	var staleFUSE bool
	if adopt && (sd.Via == "" || sd.Via == api.ViaFUSE) {
		staleFUSE = d.clearStaleFUSE(sd)
	}
	sk, err := openImage(ctx, sd, o, d.log)
	// The kernel lets go of the file when the last user of the stale
	// loop device does; an idle one soon after the lazy detach.
	for i := 0; staleFUSE && errors.Is(err, blockdev.ErrLocked) && i < staleLockTries && ctx.Err() == nil; i++ {
		time.Sleep(staleLockWait)
		sk, err = openImage(ctx, sd, o, d.log)
	}
	if err != nil {
		return nil, err
	}
	dev, format := sk.Device, sk.Format
	sd.Encrypted = sk.Encrypted
	_, plain := dev.(*blockdev.File)
	via, reason := sd.Via, sd.ViaReason
	switch {
	case via == "" && adopted != nil:
		via, reason = api.ViaLoop, "loop: adopted the loop device left attached"
	case via == "":
		via, reason = chooseVia(imageKind(sd, format), plain, paths)
	case reason == "":
		reason = askedReason(via)
	}
	dk := &disk{dev: dev, allowDiscards: sd.AllowDiscards, s3: sd.S3}
	dk.degraded, dk.stats = sk.Degraded, sk.Stats
	// A stack that cannot write (an ISO image) is attached read-only even
	// when the request did not say so.
	readOnly := sd.ReadOnly || blockdev.InfoOf(dev).ReadOnly
	// What the daemon serves itself (FUSE, nbd, ublk) is counted; a loop
	// device's I/O never passes through the daemon. dk.dev stays the
	// stack itself (resize, flush at close).
	counted := dev
	if via != api.ViaLoop {
		counted = d.metrics.Device(dev, sd.ID, format, via)
	}
	switch via {
	case api.ViaLoop:
		f, ok := dev.(*blockdev.File)
		if !ok {
			dev.Close()
			return nil, api.Errorf(api.CodeBadVia, "%s is a %s image: it can only be attached --via fuse", sd.File, imageKind(sd, format))
		}
		if adopted != nil {
			dk.loop = adopted
			d.log.Info("adopted loop device", "file", sd.File, "device", adopted.Path)
		} else if dk.loop, err = attachLoop(f, readOnly); err != nil {
			dev.Close()
			return nil, err
		}
	case api.ViaFUSE:
		// Passed-through reads and writes never reach the daemon, so a
		// daemon asked to export metrics (--metrics-listen) serves every
		// request itself rather than report a busy disk as idle.
		var backing *os.File
		if d.opt.MetricsListen == "" {
			backing = passthroughFile(dev)
		}
		if dk.fuse, dk.loop, err = d.attachFUSE(sd.ID, counted, backing, readOnly); err != nil {
			dev.Close()
			return nil, err
		}
	case api.ViaNBD, api.ViaUblk:
		attachKernel := d.attachNBD
		if via == api.ViaUblk {
			attachKernel = d.attachUblk
		}
		if dk.kern, err = attachKernel(ctx, sd, counted, adopt); err != nil {
			dev.Close()
			return nil, err
		}
	default:
		dev.Close()
		return nil, api.Errorf(api.CodeBadVia, "unknown attach path %q: want ublk, nbd, loop or fuse", via)
	}
	var node devNode
	switch {
	case dk.loop != nil:
		node = devNode{path: dk.loop.Path, major: dk.loop.Major, minor: dk.loop.Minor, blockSize: dk.loop.BlockSize, readOnly: dk.loop.ReadOnly}
	case dk.kern != nil:
		node = statNode(dk.kern.Path())
	}
	dk.rec = record(sd, dev, format, via, reason, node)
	if dk.stats != nil || dk.degraded != nil {
		src := metrics.DiskSource{Degraded: dk.degraded}
		if stats := dk.stats; stats != nil {
			src.Stats = func() metrics.CacheFigures {
				s := stats()
				return metrics.CacheFigures{DirtyBytes: s.DirtyBytes, CachedBytes: s.CachedBytes, StoredChunks: s.StoredChunks,
					LeaseRenewals: s.LeaseRenewals, LeaseRenewalFailures: s.LeaseRenewalFailures, LeaseValidUntil: s.LeaseValidUntil}
			}
		}
		d.metrics.Disk(src, dk.rec.ID, dk.rec.Format, dk.rec.Via)
	}
	return dk, nil
}

// imageKind names what the image is for attach reasons: its format,
// "encrypted" for a LUKS volume, "object store" for an s3:// image.
func imageKind(sd stateDisk, format string) string {
	k := format
	if sd.Encrypted {
		k = "encrypted " + k
	}
	if api.IsURL(sd.File) {
		k = "object store " + k
	}
	return k
}

// devNode is the block device of an open disk.
type devNode struct {
	path         string
	major, minor uint32
	// blockSize and physBlockSize are the device's logical and physical
	// block sizes as the kernel has them; zero means the stack's.
	blockSize, physBlockSize uint32
	// readOnly is set when the device refuses writes whatever was asked
	// (a loop device over a file it could only open read-only).
	readOnly bool
}

// statNode returns the node at path with its numbers and the block sizes
// the kernel gave it (zero when unknown: the record still names the path).
func statNode(path string) devNode {
	n := devNode{path: path}
	var st unix.Stat_t
	if unix.Stat(path, &st) == nil {
		n.major, n.minor = unix.Major(st.Rdev), unix.Minor(st.Rdev)
	}
	queue := filepath.Join("/sys/block", filepath.Base(path), "queue")
	n.blockSize = sysfsUint(filepath.Join(queue, "logical_block_size"))
	n.physBlockSize = sysfsUint(filepath.Join(queue, "physical_block_size"))
	return n
}

// sysfsUint reads a small decimal sysfs attribute; zero when it cannot.
func sysfsUint(name string) uint32 {
	b, err := os.ReadFile(name)
	if err != nil {
		return 0
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
	if err != nil {
		return 0
	}
	return uint32(v)
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
func record(sd stateDisk, dev blockdev.Device, format, via, reason string, node devNode) api.Disk {
	info := blockdev.InfoOf(dev)
	ro := sd.ReadOnly || info.ReadOnly || node.readOnly
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
		ViaReason:         reason,
		Removable:         media == api.MediaCDROM,
		Hotplug:           true,
		MediaType:         media,
		UniqueID:          api.UniqueID(sd.File),
		OpenedAt:          sd.OpenedAt,
		State:             api.StateOpen,
		Encrypted:         sd.Encrypted,
		BackingDirs:       sd.BackingDirs,
		NoBacking:         sd.NoBacking,
		CacheMode:         sd.CacheMode,
		AIO:               sd.AIO,
		Snapshot:          sd.Snapshot,
		SnapshotDir:       sd.SnapshotDir,
		Base:              sd.Base,
		BaseFormat:        sd.BaseFormat,
	}
	if node.path != "" {
		r.Device = node.path
		r.Major, r.Minor = node.major, node.minor
		r.DevNo = fmt.Sprintf("%d:%d", node.major, node.minor)
		if node.blockSize != 0 {
			r.LogicalBlockSize = node.blockSize
		}
		if node.physBlockSize != 0 {
			r.PhysicalBlockSize = node.physBlockSize
		}
	}
	return r
}
