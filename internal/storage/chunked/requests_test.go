package chunked

import (
	"bytes"
	"context"
	"fmt"
	"strings"
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

// leaseSplit sends the requests for the lease object to lease and every
// other request to data, so that a measurement of the data path does not
// depend on how many lease renewals a slow run lets in.
type leaseSplit struct{ data, lease objstore.Store }

func (s leaseSplit) pick(key string) objstore.Store {
	if strings.HasSuffix(key, "/"+leaseName) || key == leaseName {
		return s.lease
	}
	return s.data
}

func (s leaseSplit) Get(ctx context.Context, key string, off, n int64) ([]byte, objstore.Info, error) {
	return s.pick(key).Get(ctx, key, off, n)
}

func (s leaseSplit) Put(ctx context.Context, key string, data []byte, opts objstore.PutOptions) (objstore.Info, error) {
	return s.pick(key).Put(ctx, key, data, opts)
}

func (s leaseSplit) Delete(ctx context.Context, key string) error {
	return s.pick(key).Delete(ctx, key)
}

func (s leaseSplit) List(ctx context.Context, prefix string, fn func(objstore.Info) error) error {
	return s.data.List(ctx, prefix, fn)
}

func (s leaseSplit) Head(ctx context.Context, key string) (objstore.Info, error) {
	return s.pick(key).Head(ctx, key)
}

// requestsPerGiB writes total bytes sequentially in 1 MiB writes, depth
// of them at a time (like fio's iodepth: issued in order, done in any
// order), to a fresh image with 4 MiB chunks, flushes, and returns the
// requests made per GiB written. With rewrite, the image is written (and
// stored) once before the measured pass, so every chunk has an object.
func requestsPerGiB(t *testing.T, st objstore.Store, total int64, depth int, rewrite bool) (string, *objstore.Counter) {
	t.Helper()
	const chunk, write = 4 << 20, 1 << 20
	c, lc := objstore.NewCounter(st), objstore.NewCounter(st)
	split := leaseSplit{data: c, lease: lc}
	p := newPrefix(t)
	if _, err := Create(context.Background(), split, p, total, CreateOptions{ChunkSize: chunk}); err != nil {
		t.Fatal(err)
	}
	d := open(t, split, p, Options{LeaseHolder: "bench"})
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
	before, leaseBefore := c.Counts(), lc.Counts()
	start := time.Now()
	pass()
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	delta, leaseDelta := c.Counts().Sub(before), lc.Counts().Sub(leaseBefore)
	perGiB := float64(delta.Requests()) * float64(1<<30) / float64(total)
	t.Logf("%d MiB in 1 MiB writes, %d at a time, 4 MiB chunks, rewrite %v: %+v; %.1f requests per GiB; %.0f MiB/s; lease requests (not counted: renewals depend on how long the run takes) %+v",
		total>>20, depth, rewrite, delta, perGiB, float64(total)/float64(1<<20)/took.Seconds(), leaseDelta)
	// The lease object is counted apart: its renewals (and the PUT a
	// Flush may make to confirm it) depend on the run's wall time, not on
	// what was written.
	// The Flush commits the uploads with one conditional PUT of the
	// manifest (the fence).
	wantPuts := total/chunk + 1
	if delta.Put != wantPuts || delta.Get != 0 || delta.Delete != 0 || delta.List != 0 || delta.Head != 0 {
		t.Fatalf("requests %+v, want %d chunk PUTs, one manifest commit and nothing else (lease requests apart: %+v)", delta, wantPuts-1, leaseDelta)
	}
	if leaseDelta.Put+leaseDelta.Get+leaseDelta.Head != leaseDelta.Requests() {
		t.Fatalf("lease requests %+v: only PUTs, GETs and HEADs of the lease object expected", leaseDelta)
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
