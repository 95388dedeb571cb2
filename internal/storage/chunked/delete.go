package chunked

import (
	"context"
	"fmt"
	"os"
	"time"

	"vdisk/internal/storage/objstore"
)

// DeleteOptions say how Delete takes the image from its writer.
type DeleteOptions struct {
	// Holder names the deleter in the lease while it deletes; empty
	// means "hostname:pid".
	Holder string
	// ForceTakeover deletes an image whose writer let its lease expire.
	ForceTakeover bool
}

// Delete removes the image under prefix for good, as `vdisk rm` does. It
// first takes the image's lease like a writer would, so an image someone
// has open is refused with a *LeaseError naming the holder; then Remove
// deletes the manifest, the chunks and the lease.
func Delete(ctx context.Context, store objstore.Store, prefix string, o DeleteOptions) error {
	if _, err := Stat(ctx, store, prefix); err != nil {
		return err
	}
	if o.Holder == "" {
		host, _ := os.Hostname()
		o.Holder = fmt.Sprintf("%s:%d", host, os.Getpid())
	}
	kp := keyPrefix(prefix)
	if _, err := acquireLease(ctx, store, kp+leaseName, o.Holder+" (deleting)", DefaultLeaseTTL, o.ForceTakeover, time.Now); err != nil {
		return fmt.Errorf("chunked: delete %s: %w", prefix, err)
	}
	return Remove(ctx, store, prefix)
}
