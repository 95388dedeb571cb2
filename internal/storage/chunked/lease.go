package chunked

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"vdisk/internal/blockdev"
	"vdisk/internal/storage/objstore"
)

// maxLeaseBytes bounds the lease object read at open.
const maxLeaseBytes = 16 << 10

// leaseAcquireAttempts bounds the rounds of read-then-conditional-put when
// other writers race for the lease.
const leaseAcquireAttempts = 3

// leaseRecord is the content of <prefix>/lease.json. Its times are the
// holder's clock, shown to people and never trusted: whether a holder is
// gone is judged by watching the object (watchLease).
type leaseRecord struct {
	Holder   string    `json:"holder"`
	Acquired time.Time `json:"acquired"`
	Expires  time.Time `json:"expires"`
	Released bool      `json:"released"`
	// TTLMillis is the holder's TTL: it renews (changing the object's
	// ETag) every third of it.
	TTLMillis int64 `json:"ttl_ms,omitempty"`
	// Token is random, chosen by the holder when it took the lease and
	// kept in every renewal: a record with our token is one we wrote, so
	// a renewal whose answer was lost (it landed, the store's reply did
	// not reach us) is told from a takeover.
	Token string `json:"token,omitempty"`
}

// maxWatch bounds how long a takeover watches a lease, whatever TTL the
// record claims.
const maxWatch = 10 * time.Minute

// storeTimeSlack covers the store's times being whole seconds (HTTP
// dates): an age by them may be a second short or long.
const storeTimeSlack = time.Second

// storeNow returns the store's own clock: the modification time it gives
// a small object put under kp now. Zero when the store shows no times.
func storeNow(ctx context.Context, store objstore.Store, key string) (time.Time, error) {
	if _, err := store.Put(ctx, key, nil, objstore.PutOptions{}); err != nil {
		return time.Time{}, fmt.Errorf("read the store's clock: %w", unavailable(err))
	}
	in, err := store.Head(ctx, key)
	if derr := store.Delete(ctx, key); derr != nil && err == nil {
		err = derr
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("read the store's clock: %w", unavailable(err))
	}
	return in.ModTime, nil
}

// quietFor is how long the store says the lease object has not changed
// (its modification time against the store's clock); 0 when unknown.
func quietFor(ctx context.Context, store objstore.Store, key string, modTime time.Time) (time.Duration, error) {
	if modTime.IsZero() {
		return 0, nil
	}
	now, err := storeNow(ctx, store, strings.TrimSuffix(key, leaseName)+clockName)
	if err != nil || now.IsZero() {
		return 0, err
	}
	return max(now.Sub(modTime)-storeTimeSlack, 0), nil
}

// watchLease reports whether the lease object at key changes from etag
// within hold, as measured by this process's monotonic clock: a holder
// alive renews it (every third of its TTL), a frozen or dead one does not.
// No wall clock, ours or the holder's, enters the decision.
func watchLease(ctx context.Context, store objstore.Store, key, etag string, hold time.Duration) (bool, error) {
	if hold <= 0 {
		return false, nil
	}
	hold = min(hold+hold/8, maxWatch)
	deadline := time.Now().Add(hold)
	step := max(min(hold/8, time.Second), 10*time.Millisecond)
	for {
		in, err := store.Head(ctx, key)
		switch {
		case errors.Is(err, objstore.ErrNotFound):
			return true, nil
		case err != nil:
			return false, fmt.Errorf("watch lease %s: %w", key, unavailable(err))
		case in.ETag != etag:
			return true, nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return false, nil
		}
		t := time.NewTimer(min(step, left))
		select {
		case <-ctx.Done():
			t.Stop()
			return false, ctx.Err()
		case <-t.C:
		}
	}
}

func parseLease(b []byte) (leaseRecord, error) {
	var r leaseRecord
	if len(b) > maxLeaseBytes {
		return r, fmt.Errorf("lease of %d bytes exceeds %d: %w", len(b), maxLeaseBytes, blockdev.ErrCorrupt)
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("lease: %v: %w", err, blockdev.ErrCorrupt)
	}
	return r, nil
}

// lease is a held lease. Its fields are guarded by the Device's mu, except
// key, holder, token and ttl which never change.
type lease struct {
	key    string
	holder string
	token  string // leaseRecord.Token
	ttl    time.Duration
	// etag is the ETag of our current lease object; renewals are
	// conditional on it.
	etag string
	// validUntil is, by the monotonic clock, when our lease runs out
	// unless renewed: the renewal's start plus the TTL.
	validUntil time.Time
	// renewedAt is when the last successful renewal started.
	renewedAt time.Time
}

// acquireLease takes the lease at key for holder, or says who holds it.
func acquireLease(ctx context.Context, store objstore.Store, key, holder string, ttl time.Duration, force bool, now func() time.Time) (*lease, error) {
	for range leaseAcquireAttempts {
		cur, info, err := store.Get(ctx, key, 0, maxLeaseBytes+1)
		var opts objstore.PutOptions
		switch {
		case errors.Is(err, objstore.ErrNotFound):
			opts.IfNoneMatch = true
		case err != nil:
			return nil, fmt.Errorf("read lease %s: %w", key, unavailable(err))
		default:
			old, err := parseLease(cur)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", key, err)
			}
			if !old.Released {
				// By the clocks the holder looks expired (a hint for
				// the message only).
				expired := !now().Before(old.Expires)
				if !force {
					return nil, &LeaseError{Holder: old.Holder, Expires: old.Expires, Expired: expired}
				}
				// Forced: the holder is gone if its lease does not
				// change for a whole TTL of its own, timed here.
				hold := time.Duration(old.TTLMillis) * time.Millisecond
				if hold <= 0 {
					hold = max(ttl, DefaultLeaseTTL)
				}
				// The store's clock tells how long it has been
				// quiet already; what remains is watched here.
				quiet, err := quietFor(ctx, store, key, info.ModTime)
				if err != nil {
					return nil, err
				}
				changed, err := watchLease(ctx, store, key, info.ETag, hold-quiet)
				if err != nil {
					return nil, err
				}
				if changed {
					// Renewed (or released, or taken) meanwhile: look
					// again.
					if cur2, _, err := store.Get(ctx, key, 0, maxLeaseBytes+1); err == nil {
						if r2, err := parseLease(cur2); err == nil && !r2.Released {
							return nil, &LeaseError{Holder: r2.Holder, Expires: r2.Expires}
						}
					}
					continue
				}
			}
			opts.IfMatch = info.ETag
		}
		token := newLeaseToken()
		rec := leaseRecord{Holder: holder, Acquired: now().UTC(), Expires: now().Add(ttl).UTC(), TTLMillis: ttl.Milliseconds(), Token: token}
		b, err := json.Marshal(rec)
		if err != nil {
			return nil, err
		}
		start := time.Now()
		pin, err := store.Put(ctx, key, b, opts)
		if errors.Is(err, objstore.ErrPreconditionFailed) || errors.Is(err, objstore.ErrNotFound) {
			continue // another writer moved first: look again
		}
		if err != nil {
			return nil, fmt.Errorf("write lease %s: %w", key, unavailable(err))
		}
		return &lease{key: key, holder: holder, token: token, ttl: ttl, etag: pin.ETag, validUntil: start.Add(ttl)}, nil
	}
	return nil, fmt.Errorf("lease %s: other writers keep changing it: %w", key, ErrLeaseHeld)
}

// renew writes a fresh expiry, conditional on the lease still being ours.
// It returns the new ETag and validity; ErrLeaseLost when someone else
// holds it now.
func (l *lease) renew(ctx context.Context, store objstore.Store, etag string, now func() time.Time, released bool) (string, time.Time, error) {
	start := time.Now()
	rec := leaseRecord{Holder: l.holder, Acquired: now().UTC(), Expires: now().Add(l.ttl).UTC(), Released: released, TTLMillis: l.ttl.Milliseconds(), Token: l.token}
	b, err := json.Marshal(rec)
	if err != nil {
		return "", time.Time{}, err
	}
	in, err := store.Put(ctx, l.key, b, objstore.PutOptions{IfMatch: etag})
	if errors.Is(err, objstore.ErrPreconditionFailed) {
		// A renewal of ours may have landed without its answer reaching
		// us (the store went away mid-request, a timeout): then the
		// object still holds our token and nobody else has written
		// since, since every write is conditional on the last ETag.
		if tag, ours, gerr := l.stillOurs(ctx, store); gerr != nil {
			return "", time.Time{}, fmt.Errorf("renew lease %s: %w", l.key, unavailable(gerr))
		} else if ours {
			in, err = store.Put(ctx, l.key, b, objstore.PutOptions{IfMatch: tag})
		}
	}
	if errors.Is(err, objstore.ErrPreconditionFailed) || errors.Is(err, objstore.ErrNotFound) {
		return "", time.Time{}, fmt.Errorf("renew lease %s: %w", l.key, ErrLeaseLost)
	}
	if err != nil {
		return "", time.Time{}, fmt.Errorf("renew lease %s: %w", l.key, unavailable(err))
	}
	return in.ETag, start.Add(l.ttl), nil
}

// stillOurs reads the lease object: whether it is still ours (our token,
// not released), and its ETag.
func (l *lease) stillOurs(ctx context.Context, store objstore.Store) (string, bool, error) {
	if l.token == "" {
		return "", false, nil
	}
	b, info, err := store.Get(ctx, l.key, 0, maxLeaseBytes+1)
	if errors.Is(err, objstore.ErrNotFound) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	rec, err := parseLease(b)
	if err != nil {
		return "", false, nil
	}
	return info.ETag, rec.Token == l.token && !rec.Released, nil
}

// newLeaseToken returns a random token for a lease record.
func newLeaseToken() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (d *Device) releaseLease(ctx context.Context) error {
	d.mu.Lock()
	etag := d.lease.etag
	d.mu.Unlock()
	if _, _, err := d.lease.renew(ctx, d.store, etag, d.opts.now, true); err != nil {
		return fmt.Errorf("release lease: %w", err)
	}
	return nil
}

// renewLease renews the lease. It marks the Device fenced when the
// lease is lost.
// Renewals are serialised (each is conditional on the previous one's
// ETag); a caller that asked at since is content with any renewal started
// after it.
func (d *Device) renewLease(ctx context.Context, since time.Time) error {
	d.renewMu.Lock()
	defer d.renewMu.Unlock()
	d.mu.Lock()
	if d.fenced != nil {
		d.mu.Unlock()
		return d.fenced
	}
	if d.lease.renewedAt.After(since) {
		d.mu.Unlock()
		return nil
	}
	etag := d.lease.etag
	d.mu.Unlock()
	start := time.Now()
	newTag, valid, err := d.lease.renew(ctx, d.store, etag, d.opts.now, false)
	d.mu.Lock()
	defer d.mu.Unlock()
	if err == nil {
		d.renewals++
	} else {
		d.renewalFailures++
	}
	switch {
	case err == nil:
		d.lease.etag, d.lease.validUntil, d.lease.renewedAt = newTag, valid, start
	case errors.Is(err, ErrLeaseLost):
		d.fenceLocked(err)
	default:
		d.log.Warn("chunked: lease renewal failed", "lease", d.lease.key, "err", err)
	}
	return err
}

// leaseLoop renews the lease every third of its TTL until Close.
func (d *Device) leaseLoop() {
	t := time.NewTicker(d.opts.LeaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-t.C:
			if d.opts.zombie {
				continue
			}
			ctx, cancel := d.reqCtx()
			err := d.renewLease(ctx, time.Now())
			cancel()
			if errors.Is(err, ErrLeaseLost) {
				return
			}
		}
	}
}

// leaseErrLocked says why uploads must not happen now, or nil.
func (d *Device) leaseErrLocked() error {
	if d.lease == nil {
		return nil
	}
	if d.fenced != nil {
		return d.fenced
	}
	if time.Now().After(d.lease.validUntil) && !d.opts.zombie {
		return fmt.Errorf("chunked: lease %s not renewed in time: %w", d.lease.key, ErrLeaseLost)
	}
	return nil
}
