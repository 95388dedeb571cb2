package chunked

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"vdisk/internal/storage/objstore"
)

// holdStore holds the PUTs of chunk objects of one epoch (a stale
// writer's requests already on the wire) until release.
type holdStore struct {
	objstore.Store
	kp    string
	epoch uint64

	mu      sync.Mutex
	arrived chan struct{} // one send per held PUT
	release chan struct{}
}

func newHoldStore(st objstore.Store, prefix string) *holdStore {
	return &holdStore{Store: st, kp: keyPrefix(prefix), arrived: make(chan struct{}, 64), release: make(chan struct{})}
}

// hold starts holding the PUTs of epoch e.
func (h *holdStore) hold(e uint64) {
	h.mu.Lock()
	h.epoch = e
	h.mu.Unlock()
}

func (h *holdStore) Put(ctx context.Context, key string, data []byte, opts objstore.PutOptions) (objstore.Info, error) {
	h.mu.Lock()
	_, v, ok := parseObjKey(h.kp, key)
	held := ok && h.epoch != 0 && v.epoch == h.epoch
	h.mu.Unlock()
	if held {
		h.arrived <- struct{}{}
		<-h.release
		// Delivered late whatever the sender's context says now: the
		// request had left it.
		ctx = context.Background()
	}
	return h.Store.Put(ctx, key, data, opts)
}

// readerSees opens a reader and returns the whole image.
func readerSees(t *testing.T, st objstore.Store, p string) []byte {
	t.Helper()
	o := testOpts()
	o.ReadOnly = true
	r := open(t, st, p, o)
	defer r.Close()
	return readAll(t, r)
}

// TestFenceStaleWriter proves a writer that lost its lease (frozen, then
// thawed: no renewal, no local expiry check) cannot change the image after
// a takeover, though its uploads reach the store: a reader sees exactly
// the new writer's data, and the old writer is told it lost the lease.
func TestFenceStaleWriter(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			st := b.store(t)
			p := newPrefix(t)
			const size = 4 * testChunk
			oa := testOpts()
			oa.LeaseHolder = "a"
			oa.WriteBackDelay = 1 << 40
			oa.zombie = true
			a := create(t, st, p, size, oa)
			x := pattern(size, 1)
			mustWrite(t, a, x, 0)
			if err := a.Flush(); err != nil {
				t.Fatal(err)
			}
			// A has more dirty data when it freezes.
			mustWrite(t, a, pattern(testChunk, 9), 3*testChunk)

			ob := testOpts()
			ob.LeaseHolder = "b"
			ob.ForceTakeover = true
			bd := open(t, st, p, ob)
			y := pattern(testChunk, 2)
			mustWrite(t, bd, y, 0)
			if err := bd.Flush(); err != nil {
				t.Fatal(err)
			}
			want := bytes.Clone(x)
			copy(want, y)

			// A thaws and writes over every chunk, and flushes.
			mustWrite(t, a, pattern(size, 3), 0)
			if err := a.Flush(); !errors.Is(err, ErrLeaseLost) {
				t.Fatalf("flush of the stale writer: %v, want ErrLeaseLost", err)
			}
			if err := a.Degraded(); !errors.Is(err, ErrLeaseLost) {
				t.Fatalf("stale writer's Degraded() = %v, want ErrLeaseLost", err)
			}
			if _, err := a.WriteAt([]byte{1}, 0); !errors.Is(err, ErrLeaseLost) {
				t.Fatalf("stale writer's write: %v, want ErrLeaseLost", err)
			}
			if got := readerSees(t, st, p); !bytes.Equal(got, want) {
				t.Fatal("a reader sees other data than the new writer's")
			}
			if got := readAll(t, bd); !bytes.Equal(got, want) {
				t.Fatal("the new writer reads other data than its own")
			}
			a.Close()
			if err := bd.Close(); err != nil {
				t.Fatal(err)
			}
			// The next writer collects what the stale one left.
			oc := testOpts()
			c := open(t, st, p, oc)
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			if got := readerSees(t, st, p); !bytes.Equal(got, want) {
				t.Fatal("after collection a reader sees other data")
			}
			if n, want := len(objectKeys(t, st, p)), len(chunkKeys(t, st, p)); n != want {
				t.Fatalf("%d chunk objects left, want the %d a reader takes", n, want)
			}
		})
	}
}

// TestFenceLatePut proves the window a freeze does not cover: chunk PUTs
// of the old writer already on the wire when it stops, delivered after the
// new writer's flush (over a chunk the new writer wrote and one it did
// not), change nothing a reader sees.
func TestFenceLatePut(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			base := b.store(t)
			p := newPrefix(t)
			h := newHoldStore(base, p)
			const size = 4 * testChunk
			oa := testOpts()
			oa.LeaseHolder = "a"
			oa.WriteBackDelay = 1 << 40
			oa.zombie = true
			a := create(t, h, p, size, oa)
			x := pattern(size, 1)
			mustWrite(t, a, x, 0)
			if err := a.Flush(); err != nil {
				t.Fatal(err)
			}
			h.hold(a.epoch)
			mustWrite(t, a, pattern(2*testChunk, 5), 0) // chunks 0 and 1
			flushed := make(chan error, 1)
			go func() { flushed <- a.Flush() }()
			<-h.arrived
			<-h.arrived // both PUTs are on the wire

			ob := testOpts()
			ob.LeaseHolder = "b"
			ob.ForceTakeover = true
			bd := open(t, base, p, ob)
			y := pattern(testChunk, 2)
			mustWrite(t, bd, y, 0)
			if err := bd.Flush(); err != nil {
				t.Fatal(err)
			}
			close(h.release)
			if err := <-flushed; !errors.Is(err, ErrLeaseLost) {
				t.Fatalf("stale writer's flush: %v, want ErrLeaseLost", err)
			}
			want := bytes.Clone(x)
			copy(want, y)
			if got := readerSees(t, base, p); !bytes.Equal(got, want) {
				t.Fatal("a late PUT of the stale writer shows through")
			}
			if got := readAll(t, bd); !bytes.Equal(got, want) {
				t.Fatal("the new writer reads other data than its own")
			}
			a.Close()
		})
	}
}

// TestFenceClocks proves writers whose clocks disagree by more than a lease
// still exclude each other: a takeover does not believe a live holder's
// lease expired because its own clock runs ahead, and takes a dead
// holder's whose clock ran ahead.
func TestFenceClocks(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			st := b.store(t)
			p := newPrefix(t)
			oa := testOpts()
			oa.LeaseHolder = "a"
			oa.ClockOffset = time.Hour // its leases say they run an hour on
			a := create(t, st, p, 2*testChunk, oa)
			mustWrite(t, a, pattern(100, 1), 0)
			if err := a.Flush(); err != nil {
				t.Fatal(err)
			}

			ob := testOpts()
			ob.LeaseHolder = "b"
			ob.ForceTakeover = true
			ob.ClockOffset = 2 * time.Hour // sees a's lease as long expired
			var le *LeaseError
			if _, err := Open(context.Background(), st, p, ob); !errors.As(err, &le) || le.Holder != "a" {
				t.Fatalf("forced open beside a live writer whose clock lags: %v, want refused naming a", err)
			}
			// a writes on.
			mustWrite(t, a, pattern(100, 2), 0)
			if err := a.Flush(); err != nil {
				t.Fatalf("the holder's flush after a refused takeover: %v", err)
			}

			// a dies; b's clock is now an hour behind a's lease's
			// expiry, and still takes over.
			a.crash()
			ob.ClockOffset = -time.Hour
			bd := open(t, st, p, ob)
			got := make([]byte, 100)
			if _, err := bd.ReadAt(got, 0); err != nil || !bytes.Equal(got, pattern(100, 2)) {
				t.Fatalf("taker reads %v, %v; want the dead writer's flushed data", got[:4], err)
			}
		})
	}
}

// noCondStore ignores conditional PUTs, as some stores do.
type noCondStore struct{ objstore.Store }

func (s noCondStore) Put(ctx context.Context, key string, data []byte, _ objstore.PutOptions) (objstore.Info, error) {
	return s.Store.Put(ctx, key, data, objstore.PutOptions{})
}

// TestNoFencingRefused proves a writer is refused on a store without
// conditional PUTs unless told UnsafeNoFencing.
func TestNoFencingRefused(t *testing.T) {
	st := noCondStore{objstore.NewMem()}
	p := newPrefix(t)
	if _, err := Create(context.Background(), st, p, 2*testChunk, CreateOptions{ChunkSize: testChunk}); err != nil {
		t.Fatal(err)
	}
	_, err := Open(context.Background(), st, p, testOpts())
	if !errors.Is(err, ErrNoFencing) || !strings.Contains(err.Error(), "unsafe") {
		t.Fatalf("writer on a store without conditional PUTs: %v, want ErrNoFencing", err)
	}
	ro := testOpts()
	ro.ReadOnly = true
	open(t, st, p, ro).Close()
	o := testOpts()
	o.UnsafeNoFencing = true
	d := open(t, st, p, o)
	mustWrite(t, d, pattern(100, 1), 0)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if got := readerSees(t, st, p); !bytes.Equal(got[:100], pattern(100, 1)) {
		t.Fatal("the unsafe writer's data is not there")
	}
	if keys := objectKeysAll(t, st, p); strings.Contains(keys, "fence-probe") {
		t.Fatalf("the probe object was left behind: %s", keys)
	}
}

func objectKeysAll(t *testing.T, st objstore.Store, p string) string {
	t.Helper()
	var keys []string
	if err := st.List(context.Background(), keyPrefix(p), func(in objstore.Info) error {
		keys = append(keys, in.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return strings.Join(keys, " ")
}

// TestVersion1Image proves an image in the version 1 layout (chunks under
// their bare numbers, no epochs) reads as before, and its first writer
// moves it to version 2, keeping what it did not write and collecting what
// it replaced.
func TestVersion1Image(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			st := b.store(t)
			ctx := context.Background()
			p := newPrefix(t)
			kp := keyPrefix(p)
			const size = 3 * testChunk
			m := Manifest{Format: Format, Version: version1, Size: size, ChunkSize: testChunk, Created: time.Now().UTC().Truncate(time.Second)}
			if _, err := st.Put(ctx, kp+manifestName, manifestFile{Manifest: m}.encode(), objstore.PutOptions{IfNoneMatch: true}); err != nil {
				t.Fatal(err)
			}
			want := make([]byte, size)
			for _, idx := range []int64{0, 1} {
				data := pattern(testChunk, int(idx)+1)
				copy(want[idx*testChunk:], data)
				if _, err := st.Put(ctx, chunkKey(kp, idx), data, objstore.PutOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			if got := readerSees(t, st, p); !bytes.Equal(got, want) {
				t.Fatal("a version 1 image reads wrong")
			}
			d := open(t, st, p, testOpts())
			if !bytes.Equal(readAll(t, d), want) {
				t.Fatal("a version 1 image reads wrong to its writer")
			}
			y := pattern(testChunk, 7)
			mustWrite(t, d, y, 0)
			copy(want, y)
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			if got, err := Stat(ctx, st, p); err != nil || got.Version != Version {
				t.Fatalf("manifest after a write: %+v, %v; want version %d", got, err, Version)
			}
			if got := readerSees(t, st, p); !bytes.Equal(got, want) {
				t.Fatal("the moved image reads wrong")
			}
			if _, _, err := st.Get(ctx, chunkKey(kp, 0), 0, 1); !errors.Is(err, objstore.ErrNotFound) {
				t.Fatalf("the replaced version 1 chunk: %v, want collected", err)
			}
			if _, _, err := st.Get(ctx, chunkKey(kp, 1), 0, 1); err != nil {
				t.Fatalf("the kept version 1 chunk: %v", err)
			}
		})
	}
}

// TestCollect proves rewrites, trims and a crash leave no object behind
// once a writer closed: only those a reader takes.
func TestCollect(t *testing.T) {
	st := objstore.NewMem()
	p := newPrefix(t)
	const size = 4 * testChunk
	d := create(t, st, p, size, testOpts())
	for i := range 5 {
		mustWrite(t, d, pattern(size, i), 0)
		if err := d.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Trim(testChunk, testChunk); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, d, pattern(testChunk, 9), 2*testChunk)
	d.crash() // the trim and the write may or may not be stored
	o := testOpts()
	o.ForceTakeover = true
	d = open(t, st, p, o)
	want := readAll(t, d)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if got := readerSees(t, st, p); !bytes.Equal(got, want) {
		t.Fatal("collection changed what a reader sees")
	}
	// A tombstone may stay (it shadows nothing now, but costs nothing).
	if n := len(objectKeys(t, st, p)); n > 4 {
		t.Fatalf("%d chunk objects left for 4 chunks: %v", n, objectKeys(t, st, p))
	}
}

// lateStore is a store on which chunk idx's PUTs fail (as if the
// connection broke), the first of them landing later, on land: a request
// the writer gave up on that the store still carries out.
type lateStore struct {
	objstore.Store
	kp string

	mu      sync.Mutex
	idx     int64 // -1: none
	pending *lateput
	hold    int64 // chunk whose next PUT is held until release; -1: none
	arrived chan struct{}
	release chan struct{}
}

type lateput struct {
	key  string
	data []byte
}

func (s *lateStore) Put(ctx context.Context, key string, data []byte, opts objstore.PutOptions) (objstore.Info, error) {
	idx, v, ok := parseObjKey(s.kp, key)
	s.mu.Lock()
	fail := ok && v.epoch != 0 && idx == s.idx
	if fail && s.pending == nil {
		s.pending = &lateput{key, bytes.Clone(data)}
	}
	hold := ok && v.epoch != 0 && idx == s.hold
	if hold {
		s.hold = -1
	}
	s.mu.Unlock()
	if fail {
		return objstore.Info{}, errors.New("connection reset (the PUT may still land)")
	}
	if hold {
		s.arrived <- struct{}{}
		<-s.release
	}
	return s.Store.Put(ctx, key, data, opts)
}

// land stores the PUT that failed first, and lets later ones through.
func (s *lateStore) land(t *testing.T) {
	s.mu.Lock()
	p := s.pending
	s.idx = -1
	s.mu.Unlock()
	if p == nil {
		t.Fatal("no PUT to land")
	}
	if _, err := s.Store.Put(context.Background(), p.key, p.data, objstore.PutOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestFenceFailedPutLandsLate proves a commit never covers an upload that
// failed and may still land: writer A commits while a PUT of chunk 1 has
// failed (and keeps failing); B takes over and flushes; the failed PUT
// then lands. Had A's commit counted it, the image would change under B.
func TestFenceFailedPutLandsLate(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			base := b.store(t)
			p := newPrefix(t)
			st := &lateStore{Store: base, kp: keyPrefix(p), idx: -1, hold: -1, arrived: make(chan struct{}, 1), release: make(chan struct{})}
			const size = 3 * testChunk
			oa := testOpts()
			oa.LeaseHolder = "a"
			oa.WriteBackDelay = 1 << 40
			oa.zombie = true
			a := create(t, st, p, size, oa)
			x := pattern(size, 1)
			mustWrite(t, a, x, 0)
			if err := a.Flush(); err != nil {
				t.Fatal(err)
			}
			want := bytes.Clone(x)

			// Flush 1 stores chunk 0, held until chunk 1's PUT failed.
			st.mu.Lock()
			st.hold, st.idx = 0, 1
			st.mu.Unlock()
			// Not all of the chunk: a whole one would be uploaded at
			// once, before flush 1 starts.
			z := pattern(testChunk-512, 4)
			mustWrite(t, a, z, 0)
			copy(want, z)
			flushed := make(chan error, 1)
			go func() { flushed <- a.Flush() }()
			<-st.arrived
			mustWrite(t, a, pattern(testChunk, 5), testChunk)
			if err := a.Flush(); err == nil {
				t.Fatal("flush 2 with chunk 1's PUT failing: nil error")
			}
			close(st.release)
			if err := <-flushed; err != nil {
				t.Fatalf("flush 1 (chunk 0 only): %v", err)
			}

			ob := testOpts()
			ob.LeaseHolder = "b"
			ob.ForceTakeover = true
			bd := open(t, base, p, ob)
			y := pattern(testChunk, 6)
			mustWrite(t, bd, y, 2*testChunk)
			copy(want[2*testChunk:], y)
			if err := bd.Flush(); err != nil {
				t.Fatal(err)
			}
			st.land(t)
			if got := readerSees(t, base, p); !bytes.Equal(got, want) {
				for i := range 3 {
					o := int64(i) * testChunk
					t.Logf("chunk %d equal: %v", i, bytes.Equal(got[o:o+testChunk], want[o:o+testChunk]))
				}
				t.Fatal("a failed PUT that landed late shows through")
			}
			a.Close()
		})
	}
}
