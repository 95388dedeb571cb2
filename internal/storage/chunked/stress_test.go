package chunked

import (
	"bytes"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"vdisk/internal/storage/objstore"
	"vdisk/internal/storage/objstore/objstoretest"
)

// TestStress runs writers, readers, trims and flushes in parallel on
// regions that share chunks, with a cache small enough that chunks are
// evicted, reloaded and merged all the time; each goroutine checks its own
// region, and a reopen checks everything.
func TestStress(t *testing.T) {
	t.Run("healthy", func(t *testing.T) { stress(t, false) })
	t.Run("faults", func(t *testing.T) { stress(t, true) })
}

// stress with faults fails a tenth of the store's requests at random: a
// write or trim that fails may be refused, one that succeeds must stick.
func stress(t *testing.T, faults bool) {
	const (
		workers = 6
		region  = testChunk + testChunk/2 + 512 // regions straddle chunks
		size    = workers * region
		ops     = 150
	)
	mem := objstore.NewMem()
	f := objstoretest.NewFaulty(mem)
	p := newPrefix(t)
	st := objstore.Store(f)
	o := testOpts()
	o.CacheSize = 2 * testChunk
	o.MaxDirty = 3 * testChunk
	o.WriteBackDelay = minTick
	o.ReadAhead = testChunk / 2
	d := create(t, st, p, size, o)
	model := make([]byte, size)
	if faults {
		var mu sync.Mutex
		rng := rand.New(rand.NewPCG(3, 4))
		f.SetFault(func(op objstoretest.Op, key string) error {
			mu.Lock()
			defer mu.Unlock()
			if rng.IntN(10) == 0 {
				return objstoretest.ErrInjected
			}
			return nil
		})
	}
	var wg sync.WaitGroup
	var okWrites, failedWrites atomic.Int64
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			base := int64(w * region)
			mine := model[base : base+region]
			for i := range ops {
				off := rng.Int64N(region - 1)
				n := rng.Int64N(min(region-off, 3*testChunk/4)) + 1
				switch op := rng.IntN(10); {
				case op < 4:
					data := make([]byte, n)
					for j := range data {
						data[j] = byte(rng.IntN(255) + 1)
					}
					done, err := d.WriteAt(data, base+off)
					copy(mine[off:], data[:done])
					if err != nil {
						failedWrites.Add(1)
					} else {
						okWrites.Add(1)
					}
					if err != nil && !faults {
						t.Errorf("write: %v", err)
						return
					}
				case op < 5:
					if faults && (base+off)/testChunk != (base+off+n-1)/testChunk {
						continue // a failed multi-chunk trim leaves an unknown part done
					}
					if err := d.Trim(base+off, n); err != nil {
						if !faults {
							t.Errorf("trim: %v", err)
							return
						}
						continue
					}
					clear(mine[off : off+n])
				case op < 6 && i%3 == 0:
					if err := d.Flush(); err != nil && !faults {
						t.Errorf("flush: %v", err)
						return
					}
				default:
					got := make([]byte, n)
					if _, err := d.ReadAt(got, base+off); err != nil {
						if !faults {
							t.Errorf("read: %v", err)
							return
						}
						continue
					}
					if !bytes.Equal(got, mine[off:off+n]) {
						t.Errorf("worker %d op %d: read at %d+%d differs at %d", w, i, off, n, firstDiff(got, mine[off:off+n]))
						return
					}
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	t.Logf("%d writes succeeded, %d failed", okWrites.Load(), failedWrites.Load())
	if faults && (okWrites.Load() == 0 || failedWrites.Load() == 0) {
		t.Fatal("the faults run needs both successful and failed writes to prove anything")
	}
	f.SetFault(nil)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, open(t, mem, p, testOpts())); !bytes.Equal(got, model) {
		t.Fatalf("reopened image differs from the model at %d", firstDiff(got, model))
	}
}
