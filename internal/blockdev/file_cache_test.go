//go:build linux

package blockdev_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/blockdev/blockdevtest"
)

// openCached creates a File of size bytes in mode, at the given forced
// direct alignment (0: the file system's).
func openCached(t *testing.T, size int64, mode blockdev.CacheMode, align int64, aio ...blockdev.AIOMode) *blockdev.File {
	t.Helper()
	opt := blockdev.FileOptions{Create: true, Size: size, Cache: mode}
	if len(aio) > 0 {
		opt.AIO = aio[0]
	}
	f, err := blockdev.OpenFile(filepath.Join(t.TempDir(), "disk.img"), opt)
	if err != nil {
		if errors.Is(err, syscall.ENOSYS) || errors.Is(err, syscall.EPERM) {
			t.Skipf("no io_uring here: %v", err)
		}
		t.Fatal(err)
	}
	if align != 0 {
		blockdev.ForceDirectAlign(f, align)
	}
	return f
}

func TestConformanceCacheModes(t *testing.T) {
	for _, tc := range []struct {
		name  string
		mode  blockdev.CacheMode
		align int64
		size  int64
		aio   blockdev.AIOMode
	}{
		{"none", blockdev.CacheNone, 0, 0, 0},
		{"directsync", blockdev.CacheDirectSync, 0, 0, 0},
		{"unsafe", blockdev.CacheUnsafe, 0, 0, 0},
		// A 4096-byte logical block over a file that ends mid-block.
		{"none 4096 partial tail", blockdev.CacheNone, 4096, blockdevtest.DefaultSize + 512, 0},
		{"io_uring writeback", blockdev.CacheWriteback, 0, 0, blockdev.AIOIOUring},
		{"io_uring none", blockdev.CacheNone, 0, 0, blockdev.AIOIOUring},
		{"io_uring directsync", blockdev.CacheDirectSync, 0, 0, blockdev.AIOIOUring},
		{"io_uring none 4096 partial tail", blockdev.CacheNone, 4096, blockdevtest.DefaultSize + 512, blockdev.AIOIOUring},
	} {
		t.Run(tc.name, func(t *testing.T) {
			blockdevtest.RunWith(t, blockdevtest.Options{Size: tc.size}, func(t *testing.T, size int64) blockdev.Device {
				f := openCached(t, size, tc.mode, tc.align, tc.aio)
				if tc.mode.Direct() && f.DirectAlign() == 0 {
					t.Fatalf("cache=%v: no direct I/O", tc.mode)
				}
				return f
			})
		})
	}
	t.Run("none read-only", func(t *testing.T) {
		blockdevtest.Run(t, func(t *testing.T, size int64) blockdev.Device {
			p := filepath.Join(t.TempDir(), "disk.img")
			w, err := blockdev.OpenFile(p, blockdev.FileOptions{Create: true, Size: size})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.WriteAt([]byte("some data"), 70001); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			f, err := blockdev.OpenFile(p, blockdev.FileOptions{ReadOnly: true, Cache: blockdev.CacheNone})
			if err != nil {
				t.Fatal(err)
			}
			return f
		})
	})
}

func TestParseCacheMode(t *testing.T) {
	for _, s := range []string{"writeback", "none", "directsync", "unsafe"} {
		m, err := blockdev.ParseCacheMode(s)
		if err != nil || m.String() != s {
			t.Errorf("ParseCacheMode(%q) = %v, %v", s, m, err)
		}
	}
	if m, err := blockdev.ParseCacheMode(""); err != nil || m != blockdev.CacheWriteback {
		t.Errorf(`ParseCacheMode("") = %v, %v; want writeback`, m, err)
	}
	if _, err := blockdev.ParseCacheMode("writethrough"); err == nil {
		t.Error("writethrough accepted")
	}
	for _, s := range []string{"threads", "io_uring"} {
		m, err := blockdev.ParseAIOMode(s)
		if err != nil || m.String() != s {
			t.Errorf("ParseAIOMode(%q) = %v, %v", s, m, err)
		}
	}
	if _, err := blockdev.ParseAIOMode("native"); err == nil {
		t.Error("aio native accepted")
	}
}

// TestDirectUnalignedWriteRace has goroutines write interleaved small
// pieces that share 4 KiB blocks, each piece read-modify-writing its
// blocks, while others write whole aligned blocks nearby: every byte must
// end up as its writer left it (without the range lock, one writer's
// read-modify-write puts back another's old bytes).
func TestDirectUnalignedWriteRace(t *testing.T) {
	for _, aio := range []blockdev.AIOMode{blockdev.AIOThreads, blockdev.AIOIOUring} {
		t.Run(aio.String(), func(t *testing.T) { testUnalignedWriteRace(t, aio) })
	}
}

func testUnalignedWriteRace(t *testing.T, aio blockdev.AIOMode) {
	const (
		span    = 64 << 10 // the interleaved region
		piece   = 37
		writers = 8
		rounds  = 3
	)
	f := openCached(t, 1<<20, blockdev.CacheNone, 4096, aio)
	defer f.Close()
	owner := func(off int) int { return off / piece % writers }
	want := make([]byte, 1<<20)
	var wg sync.WaitGroup
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			var offs []int
			for off := g * piece; off < span; off += writers * piece {
				offs = append(offs, off)
			}
			for r := range rounds {
				rng.Shuffle(len(offs), func(i, j int) { offs[i], offs[j] = offs[j], offs[i] })
				for _, off := range offs {
					n := min(piece, span-off)
					buf := make([]byte, n+1)[1:] // unaligned memory too
					for i := range buf {
						buf[i] = byte(g*31 + r + 1)
					}
					if _, err := f.WriteAt(buf, int64(off)); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	// Aligned whole-block writers just past the region, through blocks that
	// the last interleaved pieces share with nothing.
	for g := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			blk := blockdev.AlignedBuffer(4096, 4096)
			for r := range 50 {
				for i := range blk {
					blk[i] = byte(200 + g + r%3)
				}
				if _, err := f.WriteAt(blk, int64(span+g*4096)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	for off := range span {
		want[off] = byte(owner(off)*31 + rounds)
	}
	for g := range 2 {
		for i := range 4096 {
			want[span+g*4096+i] = byte(200 + g + 49%3)
		}
	}
	got := make([]byte, len(want))
	if _, err := f.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(got, want); i >= 0 {
		t.Fatalf("byte %d is %d, want %d (written by goroutine %d)", i, got[i], want[i], owner(i))
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

// TestDirectFileGrows checks WriteFileAt and ReadFileAt, the file-level
// I/O formats use, under direct I/O: unaligned writes past the end grow the
// file to exactly their end, concurrent ones lose nothing, and reads past
// the end are short with io.EOF.
func TestDirectFileGrows(t *testing.T) {
	for _, align := range []int64{0, 4096} {
		t.Run(fmt.Sprint("align ", align), func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "grow.img")
			if err := os.WriteFile(p, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := blockdev.OpenFile(p, blockdev.FileOptions{Cache: blockdev.CacheNone})
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if align != 0 {
				blockdev.ForceDirectAlign(f, align)
			}
			if _, err := f.WriteFileAt([]byte("hello"), 5000); err != nil {
				t.Fatal(err)
			}
			if st, _ := os.Stat(p); st.Size() != 5005 {
				t.Fatalf("size after a write ending at 5005 = %d", st.Size())
			}
			const writers = 16
			var wg sync.WaitGroup
			for g := range writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if _, err := f.WriteFileAt(bytes.Repeat([]byte{byte(g + 1)}, 37), int64(6000+g*1000+13)); err != nil {
						t.Error(err)
					}
				}()
			}
			wg.Wait()
			end := int64(6000 + (writers-1)*1000 + 13 + 37)
			if st, _ := os.Stat(p); st.Size() != end {
				t.Fatalf("size after concurrent growing writes = %d, want %d", st.Size(), end)
			}
			got := make([]byte, end+100)
			n, err := f.ReadFileAt(got, 0)
			if n != int(end) || !errors.Is(err, io.EOF) {
				t.Fatalf("read past the end = %d, %v; want %d, io.EOF", n, err, end)
			}
			want := make([]byte, end)
			copy(want[5000:], "hello")
			for g := range writers {
				copy(want[6000+g*1000+13:], bytes.Repeat([]byte{byte(g + 1)}, 37))
			}
			if i := firstDiff(got[:n], want); i >= 0 {
				t.Fatalf("byte %d is %d, want %d", i, got[i], want[i])
			}
			// Shrinking through Truncate, then growing again.
			if err := f.Truncate(5003); err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteFileAt([]byte("XY"), 5010); err != nil {
				t.Fatal(err)
			}
			got = make([]byte, 20)
			n, _ = f.ReadFileAt(got, 5000)
			if string(got[:n]) != "hel\x00\x00\x00\x00\x00\x00\x00XY" {
				t.Fatalf("after truncate and write: %q", got[:n])
			}
		})
	}
}
