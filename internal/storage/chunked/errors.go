package chunked

import (
	"errors"
	"fmt"
	"syscall"
	"time"

	"vdisk/internal/blockdev"
)

// ErrExists is returned by Create when the prefix already holds an image.
var ErrExists = errors.New("image already exists")

// ErrNoImage is returned by Open and Stat when the prefix holds no manifest.
var ErrNoImage = errors.New("no image at the prefix")

// ErrLeaseHeld is matched (through *LeaseError) by a writable Open refused
// because another writer holds the image's lease.
var ErrLeaseHeld = errors.New("image is in use by another writer")

// ErrLeaseLost is returned by writes and Flush after another writer took
// the lease over (or it expired without renewal): this Device may no longer
// store anything.
var ErrLeaseLost = errors.New("lease on the image lost to another writer")

// ErrUnavailable wraps every failed request to the object store (after the
// store's own retries): it carries syscall.EIO, so blockdev.Errno maps it to
// EIO whatever the network error underneath says.
var ErrUnavailable = fmt.Errorf("object store unavailable: %w", syscall.EIO)

// unavailable wraps a store error err with ErrUnavailable.
func unavailable(err error) error {
	if err == nil || errors.Is(err, ErrUnavailable) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// ErrBadOptions is returned by Create and Open for options out of range.
var ErrBadOptions = errors.New("invalid options")

// LeaseError names the writer that holds an image. It matches ErrLeaseHeld
// and blockdev.ErrLocked with errors.Is.
type LeaseError struct {
	// Holder is the holder's name, as its LeaseHolder option said.
	Holder string
	// Expires is when the holder's lease runs out unless renewed.
	Expires time.Time
	// Expired is true when Expires has passed by this process's clock:
	// the holder probably died, and Options.ForceTakeover may take the
	// lease. It is a hint for people only: a forced takeover judges the
	// holder gone by the store (fence.go, watchLease), never by clocks.
	Expired bool
}

func (e *LeaseError) Error() string {
	if e.Expired {
		return fmt.Sprintf("image is held by %q whose lease expired at %s; if that writer is dead, take over with force",
			e.Holder, e.Expires.UTC().Format(time.RFC3339))
	}
	return fmt.Sprintf("image is in use by %q (lease valid until %s)", e.Holder, e.Expires.UTC().Format(time.RFC3339))
}

// Is matches ErrLeaseHeld and blockdev.ErrLocked.
func (e *LeaseError) Is(target error) bool {
	return target == ErrLeaseHeld || target == blockdev.ErrLocked
}
