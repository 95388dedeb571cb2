package chunked

import (
	"context"
	"fmt"
	"os"
	"time"

	"vdisk/internal/storage/objstore"
)

// AdminOptions say how Delete and Resize take an image from its writer:
// they hold its lease while they work, like a writer, so an image someone
// has open is refused with a *LeaseError naming the holder.
type AdminOptions struct {
	// Holder names this process in the lease; empty means "hostname:pid".
	Holder string
	// ForceTakeover takes an image whose writer let its lease expire.
	ForceTakeover bool
}

// take acquires the lease of the image under prefix for what (shown to
// other writers).
func (o AdminOptions) take(ctx context.Context, store objstore.Store, prefix, what string) (*lease, error) {
	if o.Holder == "" {
		host, _ := os.Hostname()
		o.Holder = fmt.Sprintf("%s:%d", host, os.Getpid())
	}
	return acquireLease(ctx, store, keyPrefix(prefix)+leaseName, o.Holder+" ("+what+")", DefaultLeaseTTL, o.ForceTakeover, time.Now)
}

// Delete removes the image under prefix for good, as `vdisk rm` does:
// under its lease, Remove deletes the manifest, the chunks and the lease.
func Delete(ctx context.Context, store objstore.Store, prefix string, o AdminOptions) error {
	if _, err := Stat(ctx, store, prefix); err != nil {
		return err
	}
	if _, err := o.take(ctx, store, prefix, "deleting"); err != nil {
		return fmt.Errorf("chunked: delete %s: %w", prefix, err)
	}
	return Remove(ctx, store, prefix)
}
