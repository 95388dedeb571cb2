package daemon

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"vdisk/internal/api"
	"vdisk/internal/blockdev"
	"vdisk/internal/fuseexport"
	"vdisk/internal/loop"
	"vdisk/internal/stack"
)

// disk is one entry of the registry: an open disk, or one the daemon had
// and could not restore (rec.State says which).
type disk struct {
	rec api.Disk
	// dev is the Device stack; for ViaLoop the *blockdev.File whose
	// descriptor the loop device shares. nil for a disk not open.
	dev blockdev.Device
	// loop is the loop device; nil for a disk not open.
	loop *loop.Device
	// fuse is the FUSE export of ViaFUSE; nil otherwise.
	fuse fuseExport
	// kern is the kernel device the daemon serves itself (ViaNBD,
	// ViaUblk); nil otherwise.
	kern kernelDisk
	// index is the recorded nbd index or ublk id of a disk that could not
	// be restored, kept in the state file so a later restart may still
	// take the device back; nil otherwise.
	index *int
	// degraded reports why the backend is failing (an object store image);
	// nil when the Device cannot say.
	degraded func() error
	// stats, for an s3:// disk, reports its cache.
	stats func() stack.StoreStats
	// allowDiscards and s3 are kept in the state file to reopen the disk
	// the same way (s3 without ForceTakeover).
	allowDiscards bool
	s3            *api.S3Options
}

// diskView is what the API shows of a disk, taken under d.mu: its record
// and how to ask its backend about its health.
type diskView struct {
	rec      api.Disk
	degraded func() error
	stats    func() stack.StoreStats
}

// snapshot takes the view of dk. The caller holds d.mu.
func (dk *disk) snapshot() diskView {
	return diskView{rec: dk.rec, degraded: dk.degraded, stats: dk.stats}
}

// view is the record as the API shows it: an open disk whose backend is
// failing is StateDegraded, with the reason. It asks the backend without
// d.mu, which a backend busy with its store must not hold up.
func (v diskView) view() api.Disk {
	r := v.rec
	if r.State == api.StateOpen && v.degraded != nil {
		if err := v.degraded(); err != nil {
			r.State, r.Error = api.StateDegraded, err.Error()
		}
	}
	if (r.State == api.StateOpen || r.State == api.StateDegraded) && v.stats != nil {
		s := v.stats()
		r.Cache = &api.CacheStats{DirtyBytes: s.DirtyBytes, DirtyChunks: s.DirtyChunks, CachedBytes: s.CachedBytes, StoredChunks: s.StoredChunks}
	}
	return r
}

// List returns every disk, sorted by file.
func (d *Daemon) List() []api.Disk {
	d.mu.Lock()
	views := make([]diskView, 0, len(d.disks))
	for _, dk := range d.disks {
		views = append(views, dk.snapshot())
	}
	d.mu.Unlock()
	out := make([]api.Disk, 0, len(views))
	for _, v := range views {
		out = append(out, v.view())
	}
	slices.SortFunc(out, func(a, b api.Disk) int { return cmp.Compare(a.File, b.File) })
	return out
}

// Get returns the disk with the id.
func (d *Daemon) Get(id string) (api.Disk, error) {
	d.mu.Lock()
	dk, ok := d.disks[id]
	var v diskView
	if ok {
		v = dk.snapshot()
	}
	d.mu.Unlock()
	if !ok {
		return api.Disk{}, api.Errorf(api.CodeNotFound, "no open disk has id %s", id)
	}
	return v.view(), nil
}

// Open opens req.File as a disk. It returns the disk and whether it was
// already open (only with req.Reuse). ctx is the request's: cancelling it
// (the client hung up) cancels the open; Options.OpenTimeout bounds it.
// Only this image's lock is held meanwhile.
func (d *Daemon) Open(ctx context.Context, req api.OpenRequest) (api.Disk, bool, error) {
	defer clear(req.Passphrase)
	path, err := api.Canonical(req.File)
	if err != nil {
		return api.Disk{}, false, err
	}
	url := api.IsURL(path)
	id := api.DiskID(path)
	if req.Via != "" && !api.IsVia(req.Via) {
		return api.Disk{}, false, api.Errorf(api.CodeBadVia, "unknown attach path %q: want ublk, nbd, loop or fuse", req.Via)
	}
	if err := checkSnapshot(req); err != nil {
		return api.Disk{}, false, err
	}
	if req.S3 != nil && !url && !api.IsURL(req.Base) {
		return api.Disk{}, false, api.Errorf(api.CodeBadRequest, "%s is not an s3:// image: object store options do not apply", path)
	}
	dirs, err := backingDirs(path, req.BackingDirs)
	if err != nil {
		return api.Disk{}, false, err
	}
	if err := checkCacheModes(req, url); err != nil {
		return api.Disk{}, false, err
	}
	ctx, end, err := d.beginOp(ctx)
	if err != nil {
		return api.Disk{}, false, err
	}
	defer end()
	ctx, cancel := d.opContext(ctx)
	defer cancel()
	unlock, err := d.lockImage(ctx, id, path)
	if err != nil {
		return api.Disk{}, false, err
	}
	defer unlock()
	d.mu.Lock()
	old, open := d.disks[id]
	var oldRec api.Disk
	if open {
		oldRec = old.rec
	}
	d.mu.Unlock()
	if open && oldRec.State == api.StateOpen {
		if req.Reuse {
			return oldRec, true, nil
		}
		e := api.Errorf(api.CodeAlreadyOpen, "%s is already open as %s (id %s)", path, oldRec.Device, id)
		e.Disk = &oldRec
		return api.Disk{}, false, e
	}
	if url {
		if req.Size < 0 || req.Size%512 != 0 {
			return api.Disk{}, false, api.Errorf(api.CodeInvalidSize, "size %d is not a positive multiple of 512 bytes", req.Size)
		}
	} else if err := checkFile(path, req); err != nil {
		return api.Disk{}, false, err
	}
	// A path the kernel lacks fails before anything is created.
	if err := checkVia(req.Via, d.probe()); err != nil {
		return api.Disk{}, false, err
	}
	if !url {
		// A loop device attached outside vdisk (losetup) writes the file
		// behind our back: refuse rather than serve the same image twice.
		if devs := d.findLoops(path); len(devs) > 0 {
			return api.Disk{}, false, api.Errorf(api.CodeBusy, "%s is already attached to %s outside vdisk; detach it first (losetup -d %s)", path, devs[0].Path, devs[0].Path)
		}
	}
	created := false
	if _, err := os.Stat(path); !url && !req.Snapshot && req.Base == "" && errors.Is(err, fs.ErrNotExist) {
		size := req.Size
		if size == 0 {
			size = api.DefaultSize
		}
		if err := createImage(ctx, path, req.Format, size); err != nil {
			if ctx.Err() != nil {
				err = d.ctxError(ctx, "create "+path)
			}
			return api.Disk{}, false, err
		}
		created = true
	}
	sd := stateDisk{ID: id, File: path, Format: req.Format, ReadOnly: req.ReadOnly, Via: req.Via, AllowDiscards: req.AllowDiscards,
		BackingDirs: dirs, NoBacking: req.NoBacking, OpenedAt: time.Now().UTC().Truncate(time.Second),
		Snapshot: req.Snapshot && !req.ReadOnly, SnapshotDir: req.SnapshotDir, Base: req.Base}
	sd.CacheMode, sd.AIO = req.CacheMode, req.AIO
	if req.Base != "" {
		sd.BaseFormat = req.Format
	}
	o := openOpts{passphrase: req.Passphrase}
	if url || api.IsURL(req.Base) {
		o.create, o.size = req.Create, req.Size
		if req.S3 != nil {
			o.forceTakeover, o.chunkSize = req.S3.ForceTakeover, req.S3.ChunkSize
			sd.S3 = &api.S3Options{Endpoint: req.S3.Endpoint, Region: req.S3.Region, Profile: req.S3.Profile, CacheDir: req.S3.CacheDir, CacheSize: req.S3.CacheSize, LeaseTTL: req.S3.LeaseTTL, UnsafeNoFencing: req.S3.UnsafeNoFencing}
		}
	}
	// A disk the daemon had and could not restore (locked, failed) is
	// opened again the way it was, taking back what the previous daemon
	// left (a stale FUSE mount, an nbd or ublk device); a request that
	// says nothing of backing files keeps the trust the disk had.
	adopt := open
	if open {
		sd.OpenedAt, sd.Index, sd.Device = oldRec.OpenedAt, old.index, oldRec.Device
		if req.Via == "" {
			sd.Via, sd.ViaReason = oldRec.Via, oldRec.ViaReason
		}
		if sd.S3 == nil {
			sd.S3 = old.s3
		}
		sd.AllowDiscards = sd.AllowDiscards || old.allowDiscards
		if len(req.BackingDirs) == 0 && !req.NoBacking {
			sd.BackingDirs, sd.NoBacking = oldRec.BackingDirs, oldRec.NoBacking
		}
		if req.CacheMode == "" && req.AIO == "" {
			sd.CacheMode, sd.AIO = oldRec.CacheMode, oldRec.AIO
		}
	}
	dk, err := d.attach(ctx, sd, adopt, o)
	if err != nil {
		if created {
			os.Remove(path)
		}
		if ctx.Err() != nil {
			err = d.ctxError(ctx, "open "+path)
		}
		return api.Disk{}, false, err
	}
	d.mu.Lock()
	d.disks[id] = dk
	rec := dk.rec
	d.mu.Unlock()
	d.save()
	d.log.Info("opened", "id", id, "file", path, "device", rec.Device, "via", rec.Via, "format", rec.Format, "encrypted", rec.Encrypted)
	return rec, false, nil
}

// backingDirs checks the directory trees an open request trusts for the
// files an image names: absolute paths of directories, for a local image.
// It returns them cleaned.
func backingDirs(path string, dirs []string) ([]string, error) {
	if len(dirs) == 0 {
		return nil, nil
	}
	if api.IsURL(path) {
		return nil, api.Errorf(api.CodeBadRequest, "%s is an s3:// image: it names no files, so backing directories do not apply", path)
	}
	out := make([]string, 0, len(dirs))
	for _, dir := range dirs {
		if !filepath.IsAbs(dir) {
			return nil, api.Errorf(api.CodeBadRequest, "backing directory %q is not an absolute path", dir)
		}
		dir = filepath.Clean(dir)
		fi, err := os.Stat(dir)
		switch {
		case err != nil:
			return nil, api.Errorf(api.CodeBadRequest, "backing directory %s: %v", dir, err)
		case !fi.IsDir():
			return nil, api.Errorf(api.CodeBadRequest, "backing directory %s is not a directory", dir)
		}
		if !slices.Contains(out, dir) {
			out = append(out, dir)
		}
	}
	return out, nil
}

// checkFile refuses what cannot be an image: a directory, a device, a
// special file, a missing file without Create, a bad size.
func checkFile(path string, req api.OpenRequest) error {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if !req.Create {
			return api.Errorf(api.CodeNoFile, "%s does not exist", path)
		}
		if req.ReadOnly {
			return api.Errorf(api.CodeNoFile, "%s does not exist, and a read-only disk cannot be created", path)
		}
		if req.Size < 0 || req.Size%512 != 0 {
			return api.Errorf(api.CodeInvalidSize, "size %d is not a positive multiple of 512 bytes", req.Size)
		}
		return nil
	case err != nil:
		return fmt.Errorf("stat %s: %w", path, err)
	case fi.IsDir():
		return api.Errorf(api.CodeIsDirectory, "%s is a directory, not an image file", path)
	case fi.Mode()&fs.ModeDevice != 0:
		return api.Errorf(api.CodeIsDevice, "%s is a device, not an image file", path)
	case !fi.Mode().IsRegular():
		return api.Errorf(api.CodeBadRequest, "%s is not a regular file", path)
	}
	return nil
}

// Close closes the disk with the id and returns its last record. A busy
// device fails with CodeBusy unless force, which detaches it lazily. An
// operation on the same image in flight (an open) finishes first; ctx
// bounds that wait only.
func (d *Daemon) Close(ctx context.Context, id string, force bool) (api.Disk, error) {
	return d.withDisk(ctx, id, func(dk *disk) (api.Disk, error) {
		if err := d.closeDisk(dk, force); err != nil {
			return api.Disk{}, err
		}
		d.save()
		d.log.Info("closed", "id", id, "file", dk.rec.File, "device", dk.rec.Device, "force", force)
		return dk.rec, nil
	})
}

// withDisk runs fn on the open disk with the id, as one operation that
// holds the image's lock (ctx bounds the wait for it: an open or close of
// the same image in flight).
func (d *Daemon) withDisk(ctx context.Context, id string, fn func(dk *disk) (api.Disk, error)) (api.Disk, error) {
	ctx, end, err := d.beginOp(ctx)
	if err != nil {
		return api.Disk{}, err
	}
	defer end()
	unlock, err := d.lockImage(ctx, id, "disk "+id)
	if err != nil {
		return api.Disk{}, err
	}
	defer unlock()
	d.mu.Lock()
	dk, ok := d.disks[id]
	d.mu.Unlock()
	if !ok {
		return api.Disk{}, api.Errorf(api.CodeNotFound, "no open disk has id %s", id)
	}
	return fn(dk)
}

// closeDisk flushes and detaches dk and removes it from the registry. When
// it returns nil, every write the kernel acknowledged is durable in the
// image. With force a busy device is detached lazily: it goes away when its
// last user lets go, and a FUSE export goes on serving it until then (see
// linger). The caller holds the image's lock, or is shutdown.
func (d *Daemon) closeDisk(dk *disk, force bool) error {
	lazy := false
	if dk.rec.State != api.StateOpen && dk.rec.Via == api.ViaFUSE {
		// A FUSE disk not restored (an encrypted one, locked): clear the
		// dead mount and its loop device the previous daemon left.
		d.clearStaleFUSE(stateDisk{ID: dk.rec.ID, File: dk.rec.File})
		os.Remove(d.mountDir(dk.rec.ID))
	}
	if dk.kern != nil {
		if err := releaseKernelDisk(dk.rec, dk.kern, force); err != nil {
			return err
		}
		d.mu.Lock() // save reads it
		dk.kern = nil
		d.mu.Unlock()
	}
	if dk.index != nil && dk.rec.Via == api.ViaNBD {
		d.releaseStaleNBD(dk.rec.ID, *dk.index)
	}
	if dk.loop != nil {
		err := dk.loop.Detach()
		if errors.Is(err, loop.ErrBusy) {
			if !force {
				return api.Errorf(api.CodeBusy, "%s (%s) is in use (mounted or open); unmount it, or close with --force to detach it when its last user lets go", dk.rec.Device, dk.rec.File)
			}
			err, lazy = dk.loop.DetachLazy(), true
		}
		if err != nil && !errors.Is(err, loop.ErrNotAttached) {
			return fmt.Errorf("detach %s: %w", dk.rec.Device, err)
		}
		dk.loop = nil
	}
	if dk.dev != nil {
		// Detaching wrote the loop device's dirty pages into the image
		// (or the FUSE file); now make them durable.
		if err := dk.dev.Flush(); err != nil {
			return fmt.Errorf("flush %s: %w", dk.rec.File, err)
		}
	}
	if dk.fuse != nil {
		if !lazy {
			err := dk.fuse.Close()
			if errors.Is(err, fuseexport.ErrBusy) && force {
				lazy = true
			} else if errors.Is(err, fuseexport.ErrBusy) {
				return api.Errorf(api.CodeBusy, "the FUSE file of %s is in use; close with --force", dk.rec.File)
			} else if err != nil && !errors.Is(err, fuseexport.ErrClosed) {
				return fmt.Errorf("unmount the FUSE export of %s: %w", dk.rec.File, err)
			}
		}
		if lazy {
			if err := dk.fuse.CloseForce(); err != nil && !errors.Is(err, fuseexport.ErrClosed) {
				return fmt.Errorf("unmount the FUSE export of %s: %w", dk.rec.File, err)
			}
			d.linger(dk.rec, dk.fuse, dk.dev)
			dk.dev = nil
		}
		os.Remove(d.mountDir(dk.rec.ID))
		dk.fuse = nil
	}
	if dk.dev != nil {
		if err := dk.dev.Close(); err != nil {
			return fmt.Errorf("close %s: %w", dk.rec.File, err)
		}
		dk.dev = nil
	}
	d.mu.Lock()
	delete(d.disks, dk.rec.ID)
	d.mu.Unlock()
	d.metrics.Forget(dk.rec.ID, dk.rec.Format, dk.rec.Via)
	return nil
}

// linger keeps dev open while a lazily unmounted FUSE export still serves a
// lazily detached loop device, and closes it when the kernel releases the
// file, or at shutdown (the process is ending: serving ends with it). The
// goroutine is owned by the daemon; Shutdown waits for it.
func (d *Daemon) linger(rec api.Disk, exp fuseExport, dev blockdev.Device) {
	d.lingering.Add(1)
	go func() {
		defer d.lingering.Done()
		select {
		case <-exp.Done():
		case <-d.stop:
		}
		if err := dev.Close(); err != nil {
			d.log.Error("close lazily detached disk", "id", rec.ID, "file", rec.File, "err", err)
			return
		}
		d.log.Info("lazily detached disk released", "id", rec.ID, "file", rec.File)
	}()
}

// save writes the state file from the registry. A failure is logged: the
// disks stay open, and the next change tries again.
func (d *Daemon) save() {
	d.saveMu.Lock()
	defer d.saveMu.Unlock()
	d.mu.Lock()
	var sds []stateDisk
	for _, dk := range d.disks {
		sd := stateDisk{
			ID: dk.rec.ID, File: dk.rec.File, Format: dk.rec.Format, ReadOnly: dk.rec.ReadOnly,
			Via: dk.rec.Via, ViaReason: dk.rec.ViaReason, Device: dk.rec.Device, OpenedAt: dk.rec.OpenedAt,
			Index: dk.index, Encrypted: dk.rec.Encrypted, AllowDiscards: dk.allowDiscards, S3: dk.s3,
			BackingDirs: dk.rec.BackingDirs, NoBacking: dk.rec.NoBacking,
			CacheMode: dk.rec.CacheMode, AIO: dk.rec.AIO,
			Snapshot: dk.rec.Snapshot, SnapshotDir: dk.rec.SnapshotDir, Base: dk.rec.Base, BaseFormat: dk.rec.BaseFormat,
		}
		if dk.kern != nil {
			i := dk.kern.Index()
			sd.Index = &i
		}
		sds = append(sds, sd)
	}
	d.mu.Unlock()
	slices.SortFunc(sds, func(a, b stateDisk) int { return cmp.Compare(a.File, b.File) })
	if err := saveState(d.opt.StateDir, sds); err != nil {
		d.log.Error("save state", "err", err)
	}
}

// isNoSpace reports whether err means the file system is full.
func isNoSpace(err error) bool {
	return errors.Is(err, blockdev.ErrNoSpace) || errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}
