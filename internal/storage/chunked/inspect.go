package chunked

import (
	"context"
	"errors"
	"fmt"
	"time"

	"vdisk/internal/storage/objstore"
)

// Report is what Inspect finds of an image without opening it.
type Report struct {
	Manifest Manifest
	// Chunks counts the chunk objects a reader takes (not those left for
	// collection); StoredBytes sums their sizes.
	Chunks      int64
	StoredBytes int64
	// Holder names the writer holding the lease ("" when none does);
	// Expires is when its lease runs out unless renewed.
	Holder  string
	Expires time.Time
}

// Inspect reads the image under prefix as `vdisk info` shows it: the
// manifest, the chunk objects (one listing) and the lease's holder.
func Inspect(ctx context.Context, store objstore.Store, prefix string) (Report, error) {
	kp := keyPrefix(prefix)
	f, _, err := readManifest(ctx, store, kp, prefix)
	if err != nil {
		return Report{}, err
	}
	r := Report{Manifest: f.Manifest}
	vw, err := scan(ctx, store, kp, f, -1)
	for _, o := range vw.objs {
		if o.size > 0 {
			r.Chunks++
			r.StoredBytes += o.size
		}
	}
	if err != nil {
		return Report{}, fmt.Errorf("chunked: inspect %s: list chunks: %w", prefix, unavailable(err))
	}
	b, _, err := store.Get(ctx, kp+leaseName, 0, maxLeaseBytes+1)
	switch {
	case errors.Is(err, objstore.ErrNotFound):
	case err != nil:
		return Report{}, fmt.Errorf("chunked: inspect %s: read lease: %w", prefix, unavailable(err))
	default:
		l, err := parseLease(b)
		if err != nil {
			return Report{}, fmt.Errorf("chunked: inspect %s: %w", prefix, err)
		}
		if !l.Released {
			r.Holder, r.Expires = l.Holder, l.Expires
		}
	}
	return r, nil
}
