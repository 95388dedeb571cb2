package chunked

import (
	"context"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/blockdev/blockdevtest"
)

func TestConformance(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			st := b.store(t)
			blockdevtest.Run(t, func(t *testing.T, size int64) blockdev.Device {
				return create(t, st, newPrefix(t), size, testOpts())
			})
		})
	}
}

func TestConformanceReadOnly(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			st := b.store(t)
			blockdevtest.Run(t, func(t *testing.T, size int64) blockdev.Device {
				p := newPrefix(t)
				w := create(t, st, p, size, testOpts())
				mustWrite(t, w, pattern(3*testChunk, 1), testChunk/2)
				if err := w.Close(); err != nil {
					t.Fatalf("close writer: %v", err)
				}
				o := testOpts()
				o.ReadOnly = true
				d, err := Open(context.Background(), st, p, o)
				if err != nil {
					t.Fatalf("open read-only: %v", err)
				}
				return d
			})
		})
	}
}
