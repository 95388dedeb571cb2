package chunked

// Fencing: a writer that lost its lease (frozen, partitioned, or slow past
// a --force-takeover) must not change what the image holds, whatever the
// clocks say and however long its requests take.
//
//   - Every writer takes an epoch: on open it replaces the manifest, with
//     If-Match on the ETag it read, by one whose epoch is one more and which
//     seals the previous epoch at the sequence number that epoch committed.
//   - A writer stores each chunk upload under a key of its own, never
//     overwritten: <prefix>/<chunk>-<epoch>-<seq>, seq counting the
//     writer's uploads from 1. All zeros is an empty object (a tombstone).
//   - An upload counts only once committed: Flush replaces the manifest,
//     again with If-Match, by one whose Committed says every upload of this
//     epoch up to that seq is in. A stale writer's If-Match fails: it is
//     fenced, and whatever it uploads is never committed.
//   - A reader takes, per chunk, the committed object of the highest
//     (epoch, seq); version 1 objects (<prefix>/<chunk>) count as epoch 0.
//   - Objects no reader would take (shadowed or never committed) are
//     deleted by the writer later: in batches, at Close, and at the next
//     writer's open.
//
// Commit's watermark is below every upload not known to have landed
// (running, or failed and not since superseded by a later upload of its
// chunk), so a PUT delivered late can never be one a committed view takes.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"vdisk/internal/storage/objstore"
)

// ErrNoFencing is returned by a writable Open on a store that ignores
// conditional PUTs, unless Options.UnsafeNoFencing.
var ErrNoFencing = errors.New("the object store ignores conditional PUTs (If-Match), so a stale writer could not be fenced; refusing to write (the unsafe no-fencing option overrides)")

// gcBatch is how many unreferenced objects wait before a writer deletes
// them without a Close.
const gcBatch = 1024

// fence is the fencing state of a version 2 manifest.
type fence struct {
	// Epoch is the current writer's epoch (0: none yet).
	Epoch uint64 `json:"epoch,omitempty"`
	// Committed is the highest seq of Epoch whose uploads all count.
	Committed uint64 `json:"committed,omitempty"`
	// Sealed holds the earlier epochs that committed something and still
	// have objects that count, in increasing order.
	Sealed []seal `json:"sealed,omitempty"`
}

type seal struct {
	Epoch uint64 `json:"epoch"`
	Seq   uint64 `json:"seq"`
}

func (f fence) validate(version int) error {
	if version == version1 && (f.Epoch != 0 || f.Committed != 0 || len(f.Sealed) != 0) {
		return errors.New("version 1 manifest with an epoch")
	}
	if len(f.Sealed) > maxSealed {
		return fmt.Errorf("%d sealed epochs, more than %d", len(f.Sealed), maxSealed)
	}
	var last uint64
	for _, s := range f.Sealed {
		if s.Epoch <= last || s.Epoch >= f.Epoch || s.Seq == 0 {
			return fmt.Errorf("sealed epoch %d (seq %d) out of order", s.Epoch, s.Seq)
		}
		last = s.Epoch
	}
	return nil
}

// committed reports whether an object of version v counts.
func (f fence) committed(v ver) bool {
	switch {
	case v.epoch == 0:
		return true
	case v.epoch == f.Epoch:
		return v.seq <= f.Committed
	}
	i, ok := slices.BinarySearchFunc(f.Sealed, v.epoch, func(s seal, e uint64) int { return cmpU(s.Epoch, e) })
	return ok && v.seq <= f.Sealed[i].Seq
}

func cmpU(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// ver is the version of a chunk object: epoch 0 is a version 1 object.
type ver struct{ epoch, seq uint64 }

func (v ver) less(w ver) bool { return v.epoch < w.epoch || v.epoch == w.epoch && v.seq < w.seq }

// objKeyLen is the length of a versioned key's suffix.
const objKeyLen = chunkKeyLen + 2 + 2*16

// objKey is the key of chunk idx's object of version v.
func objKey(kp string, idx int64, v ver) string {
	if v.epoch == 0 {
		return chunkKey(kp, idx)
	}
	return fmt.Sprintf("%s%016x-%016x-%016x", kp, idx, v.epoch, v.seq)
}

// parseObjKey returns the chunk number and version of a listed key, or
// false for keys that are not chunk objects.
func parseObjKey(kp, key string) (int64, ver, bool) {
	if idx, ok := parseChunkKey(kp, key); ok {
		return idx, ver{}, true
	}
	s, ok := strings.CutPrefix(key, kp)
	if !ok || len(s) != objKeyLen || s[chunkKeyLen] != '-' || s[chunkKeyLen+17] != '-' {
		return 0, ver{}, false
	}
	idx, ok := parseChunkKey("", s[:chunkKeyLen])
	if !ok {
		return 0, ver{}, false
	}
	var v ver
	for i, p := range []*uint64{&v.epoch, &v.seq} {
		h := s[chunkKeyLen+1+17*i : chunkKeyLen+17+17*i]
		if strings.Trim(h, "0123456789abcdef") != "" {
			return 0, ver{}, false
		}
		n, err := strconv.ParseUint(h, 16, 64)
		if err != nil {
			return 0, ver{}, false
		}
		*p = n
	}
	if v.epoch == 0 || v.seq == 0 {
		return 0, ver{}, false
	}
	return idx, v, true
}

// stored is the object a reader takes for a chunk.
type stored struct {
	v    ver
	size int64
	etag string
}

// view is what the objects under a prefix hold by a manifest's fence.
type view struct {
	// objs is the counting object of every chunk that has one (a
	// tombstone has size 0).
	objs map[int64]stored
	// garbage lists the keys no reader takes: shadowed, never committed
	// (of an epoch before the manifest's), or past the image's end.
	garbage []string
	// live holds the epochs of the objects in objs.
	live map[uint64]bool
}

// scan lists the chunk objects under kp (those of chunk idx only, when
// idx >= 0) and resolves them by f.
func scan(ctx context.Context, store objstore.Store, kp string, f manifestFile, idx int64) (view, error) {
	nchunks := (f.Size + f.ChunkSize - 1) / f.ChunkSize
	vw := view{objs: make(map[int64]stored), live: make(map[uint64]bool)}
	prefix := kp
	if idx >= 0 {
		prefix = chunkKey(kp, idx)
	}
	err := store.List(ctx, prefix, func(in objstore.Info) error {
		i, v, ok := parseObjKey(kp, in.Key)
		switch {
		case !ok:
			return nil
		case i >= nchunks:
			vw.garbage = append(vw.garbage, in.Key)
			return nil
		case !f.committed(v):
			if v.epoch < f.Epoch {
				vw.garbage = append(vw.garbage, in.Key)
			}
			return nil
		}
		if old, ok := vw.objs[i]; ok {
			if v.less(old.v) {
				vw.garbage = append(vw.garbage, in.Key)
				return nil
			}
			vw.garbage = append(vw.garbage, objKey(kp, i, old.v))
		}
		vw.objs[i] = stored{v: v, size: in.Size, etag: in.ETag}
		return nil
	})
	for _, o := range vw.objs {
		vw.live[o.v.epoch] = true
	}
	return vw, err
}

// takeEpoch fences every earlier writer: it replaces the manifest under kp
// by one with the next epoch, sealing the current one, conditional on the
// ETag it read. It returns the new manifest and its ETag.
func takeEpoch(ctx context.Context, store objstore.Store, kp, prefix string) (manifestFile, string, error) {
	for range leaseAcquireAttempts {
		f, etag, err := readManifest(ctx, store, kp, prefix)
		if err != nil {
			return manifestFile{}, "", err
		}
		n := f
		n.Version = Version
		n.Sealed = slices.Clone(f.Sealed)
		if f.Epoch > 0 && f.Committed > 0 {
			n.Sealed = append(n.Sealed, seal{Epoch: f.Epoch, Seq: f.Committed})
		}
		if len(n.Sealed) > maxSealed {
			return manifestFile{}, "", fmt.Errorf("chunked: %s: %d sealed epochs: open it read-write with a version that prunes them", prefix, len(n.Sealed))
		}
		n.Epoch, n.Committed = f.Epoch+1, 0
		in, err := store.Put(ctx, kp+manifestName, n.encode(), objstore.PutOptions{IfMatch: etag})
		if errors.Is(err, objstore.ErrPreconditionFailed) || errors.Is(err, objstore.ErrNotFound) {
			continue // a stale writer committed meanwhile: read again
		}
		if err != nil {
			return manifestFile{}, "", fmt.Errorf("chunked: %s: take an epoch: %w", prefix, unavailable(err))
		}
		return n, in.ETag, nil
	}
	return manifestFile{}, "", fmt.Errorf("chunked: %s: the manifest keeps changing under a new epoch: %w", prefix, ErrLeaseHeld)
}

// probeFencing checks that the store honours If-Match on PUT: a
// conditional PUT of a missing object must fail.
func probeFencing(ctx context.Context, store objstore.Store, kp string, unsafe bool) error {
	key := kp + "fence-probe"
	_, err := store.Put(ctx, key, nil, objstore.PutOptions{IfMatch: `"00000000000000000000000000000000"`})
	switch {
	case errors.Is(err, objstore.ErrNotFound) || errors.Is(err, objstore.ErrPreconditionFailed):
		return nil
	case err != nil:
		return fmt.Errorf("chunked: probe conditional PUT: %w", unavailable(err))
	}
	if derr := store.Delete(ctx, key); derr != nil {
		return fmt.Errorf("chunked: delete %s: %w", key, unavailable(derr))
	}
	if unsafe {
		return nil
	}
	return ErrNoFencing
}

// garbageKey is an object to delete once the upload seq of this epoch
// that shadows it is committed (0: at once).
type garbageKey struct {
	key string
	seq uint64
}

// watermarkLocked is the highest seq below every upload not known to be
// stored.
func (d *Device) watermarkLocked() uint64 {
	w := d.seq
	for s := range d.unsettled {
		w = min(w, s-1)
	}
	return w
}

// commit stores what Flush promises: the manifest with the watermark of
// stored uploads and the current length, replaced with If-Match. A
// precondition failure means another writer took the image: the Device is
// fenced. It returns with nothing to do when nothing changed.
func (d *Device) commit(ctx context.Context) error {
	d.manMu.Lock()
	defer d.manMu.Unlock()
	d.mu.Lock()
	if d.fenced != nil {
		err := d.fenced
		d.mu.Unlock()
		return err
	}
	f, etag := d.mf, d.manETag
	f.Committed = d.watermarkLocked()
	f.Length = d.length
	gen := d.lengthGen
	prune := d.pruneSeals
	d.mu.Unlock()
	if prune {
		f.Sealed = slices.DeleteFunc(slices.Clone(f.Sealed), func(s seal) bool { return !d.liveAtOpen[s.Epoch] })
	}
	if f.Committed == d.mf.Committed && gen == d.lengthStored && !prune {
		return nil
	}
	in, err := d.store.Put(ctx, d.kp+manifestName, f.encode(), objstore.PutOptions{IfMatch: etag})
	if errors.Is(err, objstore.ErrPreconditionFailed) || errors.Is(err, objstore.ErrNotFound) {
		err = fmt.Errorf("chunked: commit %s: another writer took the image: %w", d.kp+manifestName, ErrLeaseLost)
		d.mu.Lock()
		d.fenceLocked(err)
		d.mu.Unlock()
		return err
	}
	if err != nil {
		return fmt.Errorf("chunked: commit %s: %w", d.kp+manifestName, unavailable(err))
	}
	d.mu.Lock()
	d.mf, d.manETag, d.lengthStored, d.pruneSeals = f, in.ETag, gen, false
	n := 0
	for _, g := range d.garbage {
		if g.seq <= f.Committed {
			n++
		}
	}
	start := n >= gcBatch && !d.collecting && !d.closed
	if start {
		d.collecting = true
	}
	d.mu.Unlock()
	if start {
		d.wg.Go(func() {
			d.collect(d.ctx)
			d.mu.Lock()
			d.collecting = false
			d.mu.Unlock()
		})
	}
	return nil
}

// collect deletes the objects no committed view takes any more. Failures
// are left for the next writer's open to find.
func (d *Device) collect(ctx context.Context) {
	d.mu.Lock()
	committed := d.mf.Committed
	var now []string
	d.garbage = slices.DeleteFunc(d.garbage, func(g garbageKey) bool {
		if g.seq <= committed {
			now = append(now, g.key)
			return true
		}
		return false
	})
	d.mu.Unlock()
	for _, k := range now {
		if d.fencedErr() != nil {
			return
		}
		rctx, cancel := context.WithTimeout(ctx, d.opts.RequestTimeout)
		err := d.store.Delete(rctx, k)
		cancel()
		if err != nil {
			d.log.Warn("chunked: delete an unreferenced object", "key", k, "err", err)
			return
		}
	}
}

func (d *Device) fencedErr() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fenced
}

// fenceLocked marks the Device fenced by err.
func (d *Device) fenceLocked(err error) {
	if d.fenced != nil {
		return
	}
	d.fenced = err
	d.cond.Broadcast()
	d.log.Error("chunked: lease lost; refusing further writes", "image", d.kp, "err", err)
}

// objKeyLocked is the key of the object chunk idx reads from.
func (d *Device) objKeyLocked(idx int64) string {
	return objKey(d.kp, idx, d.vers[idx])
}

// refresh re-resolves chunk idx for a reader whose object was deleted (a
// writer superseded it): it reads the manifest again and lists the chunk's
// objects. It reports whether the chunk's object changed.
func (d *Device) refresh(ctx context.Context, idx int64) (bool, error) {
	f, _, err := readManifest(ctx, d.store, d.kp, d.kp)
	if err != nil {
		return false, err
	}
	vw, err := scan(ctx, d.store, d.kp, f, idx)
	if err != nil {
		return false, unavailable(err)
	}
	o, ok := vw.objs[idx]
	d.mu.Lock()
	defer d.mu.Unlock()
	old, had := d.vers[idx]
	if had != ok || old != o.v {
		d.invalidatePagesLocked(idx)
	}
	d.setExists(idx, ok && o.size > 0)
	if ok {
		d.vers[idx] = o.v
		if d.etags != nil {
			d.etags[idx] = o.etag
		}
	} else {
		delete(d.vers, idx)
	}
	return had != ok || old != o.v, nil
}
