package chunked

import (
	"math/rand/v2"
	"testing"
	"time"
)

// TestCrash drops Devices without Flush or Close, like a killed process,
// and checks on reopen that every flushed write is there and every byte
// holds either its flushed or its latest value (chunks are stored whole).
func TestCrash(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			st := b.store(t)
			p := newPrefix(t)
			const size = 16 * testChunk
			rng := rand.New(rand.NewPCG(1, 2))
			durable := make([]byte, size)
			latest := make([]byte, size)
			o := testOpts()
			o.WriteBackDelay = 5 * time.Millisecond // background uploads race the crash
			d := create(t, st, p, size, o)
			for round := range 6 {
				for i := range 20 {
					n := rng.IntN(3*testChunk) + 1
					off := rng.Int64N(size - int64(n))
					var data []byte
					if i%7 == 6 {
						data = make([]byte, n) // zeros: chunk deletions too
					} else {
						data = pattern(n, round*100+i)
					}
					mustWrite(t, d, data, off)
					copy(latest[off:], data)
					if i%5 == 4 {
						if err := d.Flush(); err != nil {
							t.Fatalf("flush: %v", err)
						}
						copy(durable, latest)
					}
				}
				d.crash()
				o := testOpts()
				o.ForceTakeover = true
				// Each reopen's lease runs from a clock an hour further on.
				o.ClockOffset = time.Duration(round+1) * time.Hour
				d = open(t, st, p, o)
				got := readAll(t, d)
				for i := range got {
					if got[i] != durable[i] && got[i] != latest[i] {
						t.Fatalf("round %d: byte %d is %#x after the crash, want flushed %#x or latest %#x",
							round, i, got[i], durable[i], latest[i])
					}
				}
				copy(durable, got)
				copy(latest, got)
			}
		})
	}
}
