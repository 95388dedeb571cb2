package chunked

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"vdisk/internal/blockdev"
	"vdisk/internal/storage/objstore"
)

func TestLease(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			st := b.store(t)
			ctx := context.Background()
			p := newPrefix(t)
			oa := testOpts()
			oa.LeaseHolder = "host-a:1"
			a := create(t, st, p, 4*testChunk, oa)

			ob := testOpts()
			ob.LeaseHolder = "host-b:2"
			_, err := Open(ctx, st, p, ob)
			var le *LeaseError
			if !errors.As(err, &le) || le.Holder != "host-a:1" || le.Expired {
				t.Fatalf("second writer: %v, want a LeaseError naming host-a:1, not expired", err)
			}
			if !errors.Is(err, ErrLeaseHeld) || !errors.Is(err, blockdev.ErrLocked) || !strings.Contains(err.Error(), "host-a:1") {
				t.Fatalf("second writer's error %q does not match ErrLeaseHeld/ErrLocked or name the holder", err)
			}

			ob.ForceTakeover = true
			if _, err := Open(ctx, st, p, ob); !errors.As(err, &le) || le.Expired {
				t.Fatalf("force takeover of a live lease: %v, want refused", err)
			}

			ro := testOpts()
			ro.ReadOnly = true
			r := open(t, st, p, ro)
			if err := r.Close(); err != nil {
				t.Fatalf("read-only open beside a writer: %v", err)
			}

			// The holder dies without releasing.
			mustWrite(t, a, pattern(100, 1), 0)
			if err := a.Flush(); err != nil {
				t.Fatal(err)
			}
			mustWrite(t, a, pattern(100, 2), testChunk)
			a.crash()

			ob.ForceTakeover = false
			ob.ClockOffset = later(DefaultLeaseTTL)
			if _, err := Open(ctx, st, p, ob); !errors.As(err, &le) || !le.Expired || le.Holder != "host-a:1" {
				t.Fatalf("open after expiry without force: %v, want refused as expired", err)
			}
			ob.ForceTakeover = true
			bd := open(t, st, p, ob)
			got := make([]byte, 100)
			if _, err := bd.ReadAt(got, 0); err != nil || string(got) != string(pattern(100, 1)) {
				t.Fatalf("taker reads %v, %v; want the flushed write", got[:4], err)
			}
			if err := bd.Close(); err != nil {
				t.Fatalf("close taker: %v", err)
			}
			// Released on Close: the next writer needs no force.
			oc := testOpts()
			oc.LeaseHolder = "host-c:3"
			c := open(t, st, p, oc)
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestLeaseLost proves a writer whose lease was taken over stops storing.
func TestLeaseLost(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			st := b.store(t)
			p := newPrefix(t)
			oa := testOpts()
			oa.LeaseHolder = "old"
			oa.WriteBackDelay = 1 << 40 // only Flush uploads
			oa.zombie = true            // frozen: its lease runs out unseen
			a := create(t, st, p, 4*testChunk, oa)
			mustWrite(t, a, pattern(100, 1), 0)

			ob := testOpts()
			ob.LeaseHolder = "new"
			ob.ForceTakeover = true
			ob.ClockOffset = later(DefaultLeaseTTL)
			bd := open(t, st, p, ob)

			if err := a.Flush(); !errors.Is(err, ErrLeaseLost) {
				t.Fatalf("flush of the old writer: %v, want ErrLeaseLost", err)
			}
			if got := blockdev.Errno(a.Flush()); got == 0 {
				t.Fatal("flush of the old writer has no errno")
			}
			if err := a.Degraded(); !errors.Is(err, ErrLeaseLost) {
				t.Fatalf("Degraded() = %v, want ErrLeaseLost", err)
			}
			if _, err := a.WriteAt([]byte{1}, 0); !errors.Is(err, ErrLeaseLost) {
				t.Fatalf("write of the old writer: %v, want ErrLeaseLost", err)
			}
			if keys := chunkKeys(t, st, p); len(keys) != 0 {
				t.Fatalf("the fenced writer stored chunks %v", keys)
			}
			a.Close()
			// The old writer's Close must not release the new one's lease.
			if _, err := Open(context.Background(), st, p, testOpts()); !errors.Is(err, ErrLeaseHeld) {
				t.Fatalf("open after the old writer closed: %v, want the new writer's lease to hold", err)
			}
			bd.Close()
		})
	}
}

// TestLeaseRenewed proves the Device renews its lease while open.
func TestLeaseRenewed(t *testing.T) {
	st := objstore.NewMem()
	p := newPrefix(t)
	o := testOpts()
	o.LeaseTTL = minLeaseTTL
	d := create(t, st, p, 4*testChunk, o)
	ctx := context.Background()
	first, err := st.Head(ctx, keyPrefix(p)+leaseName)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, in, err := st.Get(ctx, keyPrefix(p)+leaseName, 0, -1)
		if err != nil {
			t.Fatal(err)
		}
		rec, err := parseLease(b)
		if err != nil {
			t.Fatal(err)
		}
		if in.ETag != first.ETag {
			if rec.Holder != o.LeaseHolder || rec.Released {
				t.Fatalf("renewed lease %+v, want held by %s", rec, o.LeaseHolder)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("lease not renewed within 30s with a TTL of 1s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	b, _, err := st.Get(ctx, keyPrefix(p)+leaseName, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	if rec, err := parseLease(b); err != nil || !rec.Released {
		t.Fatalf("lease after Close: %+v, %v; want released", rec, err)
	}
	if _, err := Open(ctx, st, p, Options{LeaseTTL: time.Millisecond}); !errors.Is(err, ErrBadOptions) {
		t.Fatalf("open with a 1ms lease TTL: %v, want ErrBadOptions", err)
	}
}

// lostAnswerStore applies a PUT of the lease object and then answers it
// with an error, once armed: the store went away after storing it.
type lostAnswerStore struct {
	objstore.Store
	armed atomic.Bool
}

func (s *lostAnswerStore) Put(ctx context.Context, key string, data []byte, opts objstore.PutOptions) (objstore.Info, error) {
	info, err := s.Store.Put(ctx, key, data, opts)
	if err == nil && strings.HasSuffix(key, leaseName) && s.armed.CompareAndSwap(true, false) {
		return objstore.Info{}, errors.New("connection reset by peer")
	}
	return info, err
}

// TestLeaseRenewalAnswerLost: a renewal that landed but whose answer was
// lost does not cost the writer its lease (the next renewal and the
// release find our token in the object), while a takeover after it still
// fences the old writer.
func TestLeaseRenewalAnswerLost(t *testing.T) {
	st := &lostAnswerStore{Store: objstore.NewMem()}
	p := newPrefix(t)
	o := testOpts()
	o.WriteBackDelay = 1 << 40
	d := create(t, st, p, 4*testChunk, o)
	ctx := context.Background()
	st.armed.Store(true)
	if err := d.renewLease(ctx, time.Now()); err == nil || errors.Is(err, ErrLeaseLost) {
		t.Fatalf("renewal whose answer is lost: %v, want an unavailable store", err)
	}
	if err := d.renewLease(ctx, time.Now()); err != nil {
		t.Fatalf("next renewal: %v, want the lease still ours", err)
	}
	mustWrite(t, d, pattern(100, 1), 0)
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	st.armed.Store(true)
	d.renewLease(ctx, time.Now())
	if err := d.Close(); err != nil {
		t.Fatalf("close after a renewal whose answer was lost: %v", err)
	}

	// A takeover after a lost answer: the old writer is fenced.
	oz := o
	oz.zombie = true // its lease runs out unseen
	a := open(t, st, p, oz)
	st.armed.Store(true)
	a.renewLease(ctx, time.Now())
	ob := testOpts()
	ob.LeaseHolder = "new"
	ob.ForceTakeover = true
	ob.ClockOffset = later(DefaultLeaseTTL)
	b := open(t, st, p, ob)
	if err := a.renewLease(ctx, time.Now()); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("old writer's renewal after a takeover: %v, want ErrLeaseLost", err)
	}
	a.Close()
	b.Close()
}
