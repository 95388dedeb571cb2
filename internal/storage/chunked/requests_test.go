package chunked

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"vdisk/internal/storage/objstore"
	"vdisk/internal/storage/objstore/s3/s3test"
)

// sinkStore keeps the keys and sizes of what it is given, not the data:
// enough for a write-only measurement of a large image.
type sinkStore struct{ objstore.Store }

func (s sinkStore) Put(ctx context.Context, key string, data []byte, opts objstore.PutOptions) (objstore.Info, error) {
	if len(data) > 4096 {
		data = data[:1] // chunk payloads are dropped
	}
	return s.Store.Put(ctx, key, data, opts)
}

// requestsPerGiB writes total bytes sequentially in 1 MiB writes, depth
// of them at a time (like fio's iodepth: issued in order, done in any
// order), to a fresh image with 4 MiB chunks, flushes, and returns the
// requests made per GiB written. With rewrite, the image is written (and
// stored) once before the measured pass, so every chunk has an object.
func requestsPerGiB(t *testing.T, st objstore.Store, total int64, depth int, rewrite bool) (string, *objstore.Counter) {
	t.Helper()
	const chunk, write = 4 << 20, 1 << 20
	c := objstore.NewCounter(st)
	p := newPrefix(t)
	if _, err := Create(context.Background(), c, p, total, CreateOptions{ChunkSize: chunk}); err != nil {
		t.Fatal(err)
	}
	d := open(t, c, p, Options{LeaseHolder: "bench"})
	data := pattern(write, 5)
	pass := func() {
		var next atomic.Int64
		var wg sync.WaitGroup
		for range depth {
			wg.Go(func() {
				for {
					off := next.Add(write) - write
					if off >= total {
						return
					}
					if _, err := d.WriteAt(data, off); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
	}
	if rewrite {
		pass()
		if err := d.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	before := c.Counts()
	start := time.Now()
	pass()
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	delta := c.Counts().Sub(before)
	perGiB := float64(delta.Requests()) * float64(1<<30) / float64(total)
	t.Logf("%d MiB in 1 MiB writes, %d at a time, 4 MiB chunks, rewrite %v: %+v; %.1f requests per GiB; %.0f MiB/s",
		total>>20, depth, rewrite, delta, perGiB, float64(total)/float64(1<<20)/took.Seconds())
	wantPuts := total / chunk
	// The Flush confirms the lease with one PUT unless every chunk was
	// already stored when it was called.
	if delta.Put < wantPuts || delta.Put > wantPuts+1 || delta.Get != 0 || delta.Delete != 0 {
		t.Fatalf("requests %+v, want %d chunk PUTs, at most one lease PUT and nothing else", delta, wantPuts)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	return p, c
}

func TestRequestsPerGiB(t *testing.T) {
	for _, depth := range []int{1, 8} {
		for _, rewrite := range []bool{false, true} {
			t.Run(fmt.Sprintf("depth%d-rewrite%v", depth, rewrite), func(t *testing.T) {
				requestsPerGiB(t, sinkStore{objstore.NewMem()}, 1<<30, depth, rewrite)
			})
		}
	}
}

// TestSequentialVersitygw writes and reads back an image on versitygw
// sequentially in 1 MiB requests and logs the requests and throughput.
func TestSequentialVersitygw(t *testing.T) {
	srv := s3test.Need(t)
	const total = 128 << 20
	p, c := requestsPerGiB(t, srv.Store(t), total, 8, false)
	d := open(t, c, p, Options{ReadOnly: true})
	before := c.Counts()
	want := pattern(1<<20, 5)
	got := make([]byte, 1<<20)
	start := time.Now()
	for off := int64(0); off < total; off += int64(len(got)) {
		if _, err := d.ReadAt(got, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("read at %d returned wrong data", off)
		}
	}
	took := time.Since(start)
	delta := c.Counts().Sub(before)
	t.Logf("read %d MiB in 1 MiB reads: %+v; %.1f GETs per GiB; %.0f MiB/s",
		total>>20, delta, float64(delta.Get)*float64(1<<30)/total, float64(total)/float64(1<<20)/took.Seconds())
	if delta.BytesRead > total+8<<20 {
		t.Fatalf("read %d bytes from the store for %d bytes of reads", delta.BytesRead, total)
	}
}
