package metrics

import (
	"testing"

	"vdisk/internal/blockdev"
)

// BenchmarkRead4k measures a 4 KiB read from memory, bare and counted,
// from parallel goroutines (as an NBD server's requests are).
func BenchmarkRead4k(b *testing.B) {
	bare := blockdev.NewMem(1 << 20)
	for _, c := range []struct {
		name string
		dev  blockdev.Device
	}{{"bare", bare}, {"counted", New("export").Device(bare, "e")}} {
		b.Run(c.name, func(b *testing.B) {
			b.RunParallel(func(pb *testing.PB) {
				buf := make([]byte, 4096)
				for pb.Next() {
					if _, err := c.dev.ReadAt(buf, 8192); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
