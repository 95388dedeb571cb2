package chunked

import (
	"context"
	"errors"
	"fmt"
	"time"

	"vdisk/internal/blockdev"
	"vdisk/internal/storage/objstore"
)

// Resize changes the size of the image under prefix, which nobody may have
// open (it takes the lease): a raw image's disk size, or a format's file's
// capacity (grow only: the file itself keeps its length). It returns the
// old size.
//
// A raw image shrinks by deleting the chunks past the new end, then
// storing the new size; the new last chunk's object may keep bytes past
// the end, which reads ignore (and a later grow drops). It grows by
// rewriting its old last chunk, if short and stored, to its new length
// with zeroes (dropping any such leftover bytes), then storing the new
// size. A crash at any point leaves an image of the old or the new size
// whose bytes within the smaller are intact.
func Resize(ctx context.Context, store objstore.Store, prefix string, size int64, o AdminOptions) (int64, error) {
	m, err := Stat(ctx, store, prefix)
	if err != nil {
		return 0, err
	}
	old := m.Size
	nm := m
	nm.Size = size
	if err := nm.validate(); err != nil {
		return old, fmt.Errorf("chunked: resize %s: %v: %w", prefix, err, ErrBadOptions)
	}
	switch {
	case size == old:
		return old, nil
	case m.ImageFormat != "" && size < old:
		return old, fmt.Errorf("chunked: resize %s: the %s file's capacity only grows: %w", prefix, m.ImageFormat, blockdev.ErrNotSupported)
	}
	l, err := o.take(ctx, store, prefix, "resizing")
	if err != nil {
		return old, fmt.Errorf("chunked: resize %s: %w", prefix, err)
	}
	kp := keyPrefix(prefix)
	cs := m.ChunkSize
	err = func() error {
		// Fence any earlier writer first, as a writer's open does.
		f, etag, err := takeEpoch(ctx, store, kp, prefix)
		if err != nil {
			return err
		}
		nf := f
		nf.Size = size
		if size < old {
			var gone []string
			keep := (size + cs - 1) / cs
			err := store.List(ctx, kp, func(in objstore.Info) error {
				if idx, _, ok := parseObjKey(kp, in.Key); ok && idx >= keep {
					gone = append(gone, in.Key)
				}
				return nil
			})
			if err != nil {
				return unavailable(err)
			}
			for _, k := range gone {
				if err := store.Delete(ctx, k); err != nil && !errors.Is(err, objstore.ErrNotFound) {
					return unavailable(err)
				}
			}
		} else if old%cs != 0 {
			idx := old / cs
			vw, err := scan(ctx, store, kp, f, idx)
			if err != nil {
				return unavailable(err)
			}
			if o, ok := vw.objs[idx]; ok && o.size > 0 {
				data, _, err := store.Get(ctx, objKey(kp, idx, o.v), 0, old-idx*cs)
				if err != nil {
					return unavailable(err)
				}
				full := make([]byte, min(cs, size-idx*cs))
				copy(full, data)
				if _, err := store.Put(ctx, objKey(kp, idx, ver{f.Epoch, 1}), full, objstore.PutOptions{}); err != nil {
					return unavailable(err)
				}
				nf.Committed = 1
			}
		}
		_, err = store.Put(ctx, kp+manifestName, nf.encode(), objstore.PutOptions{IfMatch: etag})
		if errors.Is(err, objstore.ErrPreconditionFailed) || errors.Is(err, objstore.ErrNotFound) {
			return fmt.Errorf("another writer took the image: %w", ErrLeaseLost)
		}
		return unavailable(err)
	}()
	if _, _, rerr := l.renew(ctx, store, l.etag, time.Now, true); rerr != nil && err == nil {
		err = rerr
	}
	if err != nil {
		return old, fmt.Errorf("chunked: resize %s: %w", prefix, err)
	}
	return old, nil
}
