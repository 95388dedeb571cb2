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
		if size < old {
			var gone []string
			keep := (size + cs - 1) / cs
			err := store.List(ctx, kp, func(in objstore.Info) error {
				if idx, ok := parseChunkKey(kp, in.Key); ok && idx >= keep {
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
			key := chunkKey(kp, idx)
			data, _, err := store.Get(ctx, key, 0, old-idx*cs)
			switch {
			case errors.Is(err, objstore.ErrNotFound):
			case err != nil:
				return unavailable(err)
			default:
				full := make([]byte, min(cs, size-idx*cs))
				copy(full, data)
				if _, err := store.Put(ctx, key, full, objstore.PutOptions{}); err != nil {
					return unavailable(err)
				}
			}
		}
		if _, err := store.Put(ctx, kp+manifestName, nm.encode(), objstore.PutOptions{}); err != nil {
			return unavailable(err)
		}
		return nil
	}()
	if _, _, rerr := l.renew(ctx, store, l.etag, time.Now, true); rerr != nil && err == nil {
		err = rerr
	}
	if err != nil {
		return old, fmt.Errorf("chunked: resize %s: %w", prefix, err)
	}
	return old, nil
}
