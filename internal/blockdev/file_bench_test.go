//go:build linux

package blockdev

import (
	"fmt"
	"testing"
)

// BenchmarkFile measures pread/pwrite through File at a few block sizes,
// from parallel goroutines (b.RunParallel), over an image the benchmark
// fills first so that reads hit data, not holes.
func BenchmarkFile(b *testing.B) {
	const size = 64 << 20
	for _, bs := range []int{4 << 10, 64 << 10, 1 << 20} {
		for _, op := range []string{"read", "write"} {
			b.Run(fmt.Sprintf("%s/%dK", op, bs>>10), func(b *testing.B) {
				f, err := OpenFile(b.TempDir()+"/disk.img", FileOptions{Create: true, Size: size})
				if err != nil {
					b.Fatal(err)
				}
				defer f.Close()
				buf := make([]byte, 1<<20)
				for i := range buf {
					buf[i] = byte(i) | 1
				}
				for off := int64(0); off < size; off += int64(len(buf)) {
					if _, err := f.WriteAt(buf, off); err != nil {
						b.Fatal(err)
					}
				}
				b.SetBytes(int64(bs))
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					p := make([]byte, bs)
					off := int64(0)
					for pb.Next() {
						var err error
						if op == "read" {
							_, err = f.ReadAt(p, off)
						} else {
							_, err = f.WriteAt(p, off)
						}
						if err != nil {
							b.Error(err)
							return
						}
						off = (off + int64(bs)) % size
					}
				})
			})
		}
	}
}
