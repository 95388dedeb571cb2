package chunked

import (
	"context"
	"errors"
	"fmt"

	"vdisk/internal/storage/objstore"
)

// Remove deletes the image under prefix: its manifest first (so the image
// is gone for every opener at once), then its chunks and lease. Objects
// under the prefix that are not the image's are left alone. The caller
// must know nobody has the image open, as when undoing its own Create.
func Remove(ctx context.Context, store objstore.Store, prefix string) error {
	kp := keyPrefix(prefix)
	if err := store.Delete(ctx, kp+manifestName); err != nil && !errors.Is(err, objstore.ErrNotFound) {
		return fmt.Errorf("chunked: remove %s: %w", prefix, unavailable(err))
	}
	var keys []string
	err := store.List(ctx, kp, func(in objstore.Info) error {
		if _, _, ok := parseObjKey(kp, in.Key); ok || in.Key == kp+leaseName || in.Key == kp+"fence-probe" || in.Key == kp+clockName {
			keys = append(keys, in.Key)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("chunked: remove %s: list: %w", prefix, unavailable(err))
	}
	for _, k := range keys {
		if err := store.Delete(ctx, k); err != nil && !errors.Is(err, objstore.ErrNotFound) {
			return fmt.Errorf("chunked: remove %s: %w", prefix, unavailable(err))
		}
	}
	return nil
}
