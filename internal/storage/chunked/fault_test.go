package chunked

import (
	"bytes"
	"context"
	"sync"
	"syscall"
	"testing"
	"time"

	"vdisk/internal/blockdev"
	"vdisk/internal/storage/objstore"
	"vdisk/internal/storage/objstore/objstoretest"
	"vdisk/internal/storage/objstore/s3/s3test"
)

// TestFaults injects store failures (a 5xx that outlived the retries, and
// requests that hang past the timeout): Flush and later writes fail with
// EIO, the Device reports itself degraded, and once the store answers
// again a Flush stores everything that was acknowledged.
func TestFaults(t *testing.T) {
	tests := []struct {
		name  string
		fault objstoretest.Fault
	}{
		{"5xx", objstoretest.FailAll(objstoretest.OpPut, objstoretest.OpDelete, objstoretest.OpGet)},
		{"timeout", func(objstoretest.Op, string) error { return objstoretest.ErrHang }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mem := objstore.NewMem()
			f := objstoretest.NewFaulty(mem)
			p := newPrefix(t)
			o := testOpts()
			o.RequestTimeout = 200 * time.Millisecond
			o.WriteBackDelay = 1 << 40 // only Flush and pressure upload
			const size = 8 * testChunk
			d := create(t, f, p, size, o)
			model := make([]byte, size)

			first := pattern(3*testChunk, 1)
			mustWrite(t, d, first, 100)
			copy(model[100:], first)
			if err := d.Flush(); err != nil {
				t.Fatal(err)
			}
			second := pattern(2*testChunk, 2)
			mustWrite(t, d, second, 4*testChunk+7) // acknowledged, not flushed
			copy(model[4*testChunk+7:], second)

			f.SetFault(tc.fault)
			err := d.Flush()
			if err == nil || blockdev.Errno(err) != syscall.EIO {
				t.Fatalf("flush with the store down: %v (errno %v), want EIO", err, blockdev.Errno(err))
			}
			if d.Degraded() == nil {
				t.Fatal("Degraded() = nil with the store down")
			}
			if _, err := d.WriteAt([]byte{9}, 0); blockdev.Errno(err) != syscall.EIO {
				t.Fatalf("write while degraded: %v, want EIO", err)
			}
			// Cached data still reads.
			got := make([]byte, len(second))
			if _, err := d.ReadAt(got, 4*testChunk+7); err != nil || !bytes.Equal(got, second) {
				t.Fatalf("read of cached data while degraded: %v", err)
			}

			// Chunks 4 and 6 (partly written) wait for a Flush; 5 (written
			// over in full) may have been stored before the fault.
			if st := d.Stats(); st.DirtyChunks == 0 || st.DirtyBytes == 0 {
				t.Fatalf("stats while degraded: %+v, want the unstored chunks", st)
			}
			f.SetFault(nil)
			// The Device retries the failed uploads by itself and
			// recovers without a Flush. (Not degraded is not enough: an
			// upload begun during the outage may still fail after one
			// that was retried worked.)
			deadline := time.Now().Add(recoveryTimeout)
			for d.Degraded() != nil || d.Stats().DirtyChunks != 0 {
				if time.Now().After(deadline) {
					t.Fatalf("still degraded (%v, %+v) %v after the store came back", d.Degraded(), d.Stats(), recoveryTimeout)
				}
				time.Sleep(10 * time.Millisecond)
			}
			if err := d.Flush(); err != nil {
				t.Fatalf("flush after the store came back: %v", err)
			}
			if err := d.Degraded(); err != nil {
				t.Fatalf("Degraded() = %v after a good flush", err)
			}
			d.crash()
			ro := testOpts()
			ro.ReadOnly = true
			if got := readAll(t, open(t, mem, p, ro)); !bytes.Equal(got, model) {
				t.Fatalf("after recovery the store lacks acknowledged data (first diff at %d)", firstDiff(got, model))
			}
		})
	}
}

// recoveryTimeout bounds the wait for background retries to succeed.
const recoveryTimeout = 30 * time.Second

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestServerOutage stops versitygw while a writer writes and flushes, then
// restarts it: every write acknowledged by a successful Flush is stored,
// and the writes that failed were reported as failures.
func TestServerOutage(t *testing.T) {
	srv := s3test.Need(t)
	st := srv.Store(t)
	p := newPrefix(t)
	o := testOpts()
	o.RequestTimeout = 5 * time.Second
	const size = 32 * testChunk
	d := create(t, st, p, size, o)

	durable := make([]byte, size) // contents as of the last good Flush
	latest := make([]byte, size)
	var failures, successes int
	write := func(i int) {
		off := int64(i%32) * testChunk
		data := pattern(testChunk, i)
		if _, err := d.WriteAt(data, off); err != nil {
			if blockdev.Errno(err) != syscall.EIO {
				t.Fatalf("write %d: %v, want EIO", i, err)
			}
			failures++
			return
		}
		copy(latest[off:], data)
		if err := d.Flush(); err != nil {
			if blockdev.Errno(err) != syscall.EIO {
				t.Fatalf("flush %d: %v, want EIO", i, err)
			}
			failures++
			return
		}
		copy(durable, latest)
		successes++
	}
	i := 0
	for ; i < 20; i++ {
		write(i)
	}
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	for ; i < 30; i++ {
		write(i)
	}
	if failures == 0 {
		t.Fatal("no write or flush failed while the server was down")
	}
	if d.Degraded() == nil {
		t.Fatal("Degraded() = nil while the server is down")
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	// The first flush after the restart stores what the cache kept.
	if err := d.Flush(); err != nil {
		t.Fatalf("flush after restart: %v", err)
	}
	copy(durable, latest)
	for ; i < 40; i++ {
		write(i)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	ro := testOpts()
	ro.ReadOnly = true
	if got := readAll(t, open(t, st, p, ro)); !bytes.Equal(got, durable) {
		t.Fatalf("after the outage the store differs from every acknowledged write at byte %d", firstDiff(got, durable))
	}
	t.Logf("%d writes/flushes succeeded, %d failed with EIO during the outage", successes, failures)
}

// gateStore blocks PUTs while its gate is closed and records whether two
// PUTs of one key ever overlapped.
type gateStore struct {
	objstore.Store

	mu       sync.Mutex
	gate     chan struct{} // nil: open
	blocked  chan struct{} // receives when a PUT waits at the gate
	inflight map[string]int
	overlap  string
}

func (g *gateStore) Put(ctx context.Context, key string, data []byte, opts objstore.PutOptions) (objstore.Info, error) {
	g.mu.Lock()
	gate := g.gate
	g.inflight[key]++
	if g.inflight[key] > 1 {
		g.overlap = key
	}
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		g.inflight[key]--
		g.mu.Unlock()
	}()
	if gate != nil {
		select {
		case g.blocked <- struct{}{}:
		default:
		}
		select {
		case <-gate:
		case <-ctx.Done():
			return objstore.Info{}, ctx.Err()
		}
	}
	return g.Store.Put(ctx, key, data, opts)
}

// TestDirtyCap proves writers block while MaxDirty bytes await upload and
// that a chunk never has two PUTs in flight.
func TestDirtyCap(t *testing.T) {
	g := &gateStore{Store: objstore.NewMem(), inflight: map[string]int{}, blocked: make(chan struct{}, 1)}
	p := newPrefix(t)
	o := testOpts()
	o.MaxDirty = 2 * testChunk
	d := create(t, g, p, 16*testChunk, o)

	g.mu.Lock()
	g.gate = make(chan struct{})
	g.mu.Unlock()
	mustWrite(t, d, pattern(2*testChunk, 1), 0) // fills the cap, queues both chunks
	<-g.blocked                                 // an upload waits at the gate
	done := make(chan error, 1)
	go func() { _, err := d.WriteAt(pattern(testChunk, 2), 5*testChunk); done <- err }()
	d.mu.Lock()
	dirty := d.dirtyBytes
	d.mu.Unlock()
	if dirty > o.MaxDirty {
		t.Fatalf("dirty bytes %d exceed MaxDirty %d", dirty, o.MaxDirty)
	}
	select {
	case err := <-done:
		t.Fatalf("write past the dirty cap returned (%v) while uploads were blocked", err)
	default:
	}
	g.mu.Lock()
	close(g.gate)
	g.gate = nil
	g.mu.Unlock()
	if err := <-done; err != nil {
		t.Fatalf("blocked write: %v", err)
	}

	// Many writers hammering few chunks, with flushes: one PUT per chunk.
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 50 {
				off := int64((w*50+i)%6)*testChunk + int64(i*512)
				if _, err := d.WriteAt(pattern(4096, i), off); err != nil {
					t.Errorf("write: %v", err)
					return
				}
				if i%10 == 0 {
					if err := d.Flush(); err != nil {
						t.Errorf("flush: %v", err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.overlap != "" {
		t.Fatalf("two PUTs of %s were in flight at once", g.overlap)
	}
}
