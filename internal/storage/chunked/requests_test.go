package chunked

import (
	"context"
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

// requestsPerGiB writes total bytes sequentially in 1 MiB writes to a
// fresh image with 4 MiB chunks, flushes, and returns the requests made
// per GiB written.
func requestsPerGiB(t *testing.T, st objstore.Store, total int64) (objstore.Counts, float64) {
	t.Helper()
	const chunk, write = 4 << 20, 1 << 20
	c := objstore.NewCounter(st)
	p := newPrefix(t)
	if _, err := Create(context.Background(), c, p, total, CreateOptions{ChunkSize: chunk}); err != nil {
		t.Fatal(err)
	}
	d := open(t, c, p, Options{LeaseHolder: "bench"})
	before := c.Counts()
	data := pattern(write, 5)
	start := time.Now()
	for off := int64(0); off < total; off += write {
		mustWrite(t, d, data, off)
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	delta := c.Counts().Sub(before)
	perGiB := float64(delta.Requests()) * float64(1<<30) / float64(total)
	t.Logf("%d MiB in 1 MiB writes, 4 MiB chunks: %+v; %.1f requests per GiB; %.0f MiB/s",
		total>>20, delta, perGiB, float64(total)/float64(1<<20)/took.Seconds())
	wantPuts := total / chunk
	if delta.Put != wantPuts+1 || delta.Get != 0 || delta.Delete != 0 { // +1: the lease check of the Flush
		t.Fatalf("requests %+v, want %d chunk PUTs, one lease PUT and nothing else", delta, wantPuts)
	}
	return delta, perGiB
}

func TestRequestsPerGiB(t *testing.T) {
	requestsPerGiB(t, sinkStore{objstore.NewMem()}, 1<<30)
}

func TestRequestsPerGiBVersitygw(t *testing.T) {
	srv := s3test.Need(t)
	requestsPerGiB(t, srv.Store(t), 128<<20)
}
