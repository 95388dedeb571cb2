package chunked

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"vdisk/internal/storage/objstore"
)

// gatedStore holds every GET of a chunk object while gate is set, until
// release is closed, and tells arrived of each one held.
type gatedStore struct {
	objstore.Store
	mu      sync.Mutex
	gate    bool
	arrived chan struct{}
	release chan struct{}
}

func (g *gatedStore) Get(ctx context.Context, key string, off, n int64) ([]byte, objstore.Info, error) {
	g.mu.Lock()
	gated := g.gate && !bytes.HasSuffix([]byte(key), []byte(".json"))
	arrived, release := g.arrived, g.release
	g.mu.Unlock()
	if gated {
		arrived <- struct{}{}
		<-release
	}
	return g.Store.Get(ctx, key, off, n)
}

func (g *gatedStore) setGate(on bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.gate = on
	if on {
		g.arrived, g.release = make(chan struct{}, 64), make(chan struct{})
	}
}

// waitArrivals waits for n gated GETs, failing the test if they never
// come (a bound on a hang, not a timing assertion).
func (g *gatedStore) waitArrivals(t *testing.T, n int) {
	t.Helper()
	for range n {
		select {
		case <-g.arrived:
		case <-time.After(time.Minute):
			t.Fatalf("fewer than %d GETs in flight at once", n)
		}
	}
}

// TestPagesParallelFetch proves random reads of one chunk fetch at the
// same time, not one after the other: four reads of different pages are
// all in the store at once before any of them is answered.
func TestPagesParallelFetch(t *testing.T) {
	g := &gatedStore{Store: objstore.NewMem()}
	p := newPrefix(t)
	w := create(t, g, p, 4*testChunk, testOpts())
	want := pattern(4*testChunk, 3)
	mustWrite(t, w, want, 0)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	o := testOpts()
	o.ReadOnly = true
	d := open(t, g, p, o)
	g.setGate(true)
	offs := []int64{testChunk + 4096, testChunk + 40960, testChunk + 8192, testChunk + 20480}
	errs := make(chan error, len(offs))
	bufs := make([][]byte, len(offs))
	for i, off := range offs {
		bufs[i] = make([]byte, 4096)
		go func() {
			_, err := d.ReadAt(bufs[i], off)
			errs <- err
		}()
	}
	g.waitArrivals(t, len(offs))
	close(g.release)
	for range offs {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for i, off := range offs {
		if !bytes.Equal(bufs[i], want[off:off+4096]) {
			t.Fatalf("read at %d returned wrong data", off)
		}
	}
}

// TestPagesInvalidated proves a cached page never hides a later write:
// not while the write is cached, not once it is stored and its chunk
// evicted, and not when the write lands during the page's fetch.
func TestPagesInvalidated(t *testing.T) {
	g := &gatedStore{Store: objstore.NewMem()}
	p := newPrefix(t)
	o := testOpts()
	o.CacheSize = testChunk // one chunk: the next evicts it
	o.ReadAhead = -1
	d := create(t, g, p, 4*testChunk, o)
	a, b, c := pattern(testChunk, 1), pattern(testChunk, 2), pattern(testChunk, 3)
	mustWrite(t, d, a, 0)
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	// Evict chunk 0's cached buf: its reads go to pages.
	mustWrite(t, d, pattern(testChunk, 9), 2*testChunk)
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	read := func(want []byte, what string) {
		t.Helper()
		if _, err := d.ReadAt(buf, 8192); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, want[8192:8192+4096]) {
			t.Fatalf("%s: stale data", what)
		}
	}
	read(a, "first read")
	read(a, "cached page")
	mustWrite(t, d, b, 0)
	read(b, "write cached")
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, d, pattern(testChunk, 8), 3*testChunk)
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	read(b, "write stored, chunk evicted")

	// A fetch of the old object that ends after a write and its upload
	// returns the old data to its reader but leaves no page behind.
	mustWrite(t, d, pattern(testChunk, 7), 3*testChunk) // evict chunk 0 again
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	g.setGate(true)
	done := make(chan error, 1)
	go func() {
		_, err := d.ReadAt(make([]byte, 4096), 8192)
		done <- err
	}()
	g.waitArrivals(t, 1)
	g.setGate(false)
	mustWrite(t, d, c, 0) // whole chunk: no GET needed to upload it
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, d, pattern(testChunk, 6), 3*testChunk) // and evict it
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	close(g.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	read(c, "write during a fetch")
}
