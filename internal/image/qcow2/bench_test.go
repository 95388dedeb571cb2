package qcow2

import (
	"math/rand/v2"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"vdisk/internal/image"
)

// benchSize is the virtual size of the benchmark images.
const benchSize = 256 << 20

// benchImage creates an image of benchSize with fill of it allocated
// (0, 0.5 or 1) and opens it.
func benchImage(b *testing.B, fill float64) *Image {
	b.Helper()
	p := filepath.Join(b.TempDir(), "bench.qcow2")
	if err := createPath(p, image.CreateOptions{Format: "qcow2", Size: benchSize}); err != nil {
		b.Fatal(err)
	}
	img, err := openPath(p, image.OpenOptions{})
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i | 1)
	}
	for off := int64(0); off < int64(float64(benchSize)*fill); off += int64(len(buf)) {
		if _, err := img.WriteAt(buf, off); err != nil {
			b.Fatal(err)
		}
	}
	if err := img.Flush(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { img.Close() })
	return img
}

// benchQD runs b.N requests of size bs at random aligned offsets from
// depth goroutines.
func benchQD(b *testing.B, img *Image, bs, depth int, write bool) {
	benchQDAt(b, img, bs, depth, write, false)
}

// benchQDAt is benchQD with sequential offsets when seq is set (as
// qemu-img bench does, for comparison).
func benchQDAt(b *testing.B, img *Image, bs, depth int, write, seq bool) {
	b.SetBytes(int64(bs))
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	for g := range depth {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 1))
			buf := make([]byte, bs)
			for i := range buf {
				buf[i] = byte(g + 1)
			}
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				off := r.Int64N(benchSize/int64(bs)) * int64(bs)
				if seq {
					off = (i - 1) % (benchSize / int64(bs)) * int64(bs)
				}
				var err error
				if write {
					_, err = img.WriteAt(buf, off)
				} else {
					_, err = img.ReadAt(buf, off)
				}
				if err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func BenchmarkRandRead4kQD32(b *testing.B) {
	for _, tc := range []struct {
		name string
		fill float64
	}{{"empty", 0}, {"half", 0.5}, {"full", 1}} {
		b.Run(tc.name, func(b *testing.B) { benchQD(b, benchImage(b, tc.fill), 4096, 32, false) })
	}
}

func BenchmarkRandWrite4kQD32(b *testing.B) {
	for _, tc := range []struct {
		name string
		fill float64
	}{{"empty", 0}, {"half", 0.5}, {"full", 1}} {
		b.Run(tc.name, func(b *testing.B) { benchQD(b, benchImage(b, tc.fill), 4096, 32, true) })
	}
}

func BenchmarkSeqRead1M(b *testing.B) {
	img := benchImage(b, 1)
	buf := make([]byte, 1<<20)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for i := range b.N {
		if _, err := img.ReadAt(buf, int64(i%(benchSize>>20))<<20); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSeq4kQD32 matches qemu-img bench -d 32 -s 4k (sequential
// offsets), for a side-by-side number.
func BenchmarkSeq4kQD32(b *testing.B) {
	b.Run("read-full", func(b *testing.B) { benchQDAt(b, benchImage(b, 1), 4096, 32, false, true) })
	b.Run("write-full", func(b *testing.B) { benchQDAt(b, benchImage(b, 1), 4096, 32, true, true) })
	b.Run("write-empty", func(b *testing.B) { benchQDAt(b, benchImage(b, 0), 4096, 32, true, true) })
}

// BenchmarkSeqWrite1M writes an empty image sequentially, 1 MiB at a time
// (the allocation path, as convert drives it).
func BenchmarkSeqWrite1M(b *testing.B) {
	img := benchImage(b, 0)
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i | 1)
	}
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for i := range b.N {
		if _, err := img.WriteAt(buf, int64(i%(benchSize>>20))<<20); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkExtentsSparse maps a 1 TiB image with one allocated cluster.
func BenchmarkExtentsSparse(b *testing.B) {
	p := filepath.Join(b.TempDir(), "big.qcow2")
	if err := createPath(p, image.CreateOptions{Format: "qcow2", Size: 1 << 40}); err != nil {
		b.Fatal(err)
	}
	img, err := openPath(p, image.OpenOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer img.Close()
	if _, err := img.WriteAt([]byte{1}, 1<<39); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		for off := int64(0); off < img.Size(); {
			ex, err := img.Extents(off, img.Size()-off)
			if err != nil {
				b.Fatal(err)
			}
			off = ex[len(ex)-1].Off + ex[len(ex)-1].Len
		}
	}
}
