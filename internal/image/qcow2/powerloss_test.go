package qcow2

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"vdisk/internal/blockdev/blockdevtest"
	"vdisk/internal/image"
	"vdisk/internal/image/imagetest"
)

// crashStore is a store over a blockdevtest.Crashable: Sync is its Flush,
// so a Crash loses (any subset of) what was written since the last Sync.
type crashStore struct {
	path string // where the image would be: its backing file is beside it
	c    *blockdevtest.Crashable
	mu   sync.Mutex
	size int64
	// The power goes during the crashAt-th Sync: durable is what had
	// reached the disk, pending what was written since the Sync before
	// (any subset of it may have reached the disk too).
	syncs, crashAt int
	durable        []byte
	pending        []blockdevtest.Write
}

// errPowerCut is what every Sync returns from the power cut on.
var errPowerCut = errors.New("power cut")

func (s *crashStore) ReadAt(p []byte, off int64) (int, error) {
	s.mu.Lock()
	size := s.size
	s.mu.Unlock()
	if off >= size {
		return 0, io.EOF
	}
	n := min(int64(len(p)), size-off)
	if _, err := s.c.ReadAt(p[:n], off); err != nil {
		return 0, err
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

func (s *crashStore) WriteAt(p []byte, off int64) (int, error) {
	n, err := s.c.WriteAt(p, off)
	s.mu.Lock()
	s.size = max(s.size, off+int64(n))
	s.mu.Unlock()
	return n, err
}

func (s *crashStore) Sync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.syncs++
	if s.durable != nil {
		return errPowerCut
	}
	if s.syncs == s.crashAt {
		s.cutLocked()
		return errPowerCut
	}
	return s.c.Flush()
}

// cut cuts the power now unless it already went.
func (s *crashStore) cut() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.durable == nil {
		s.cutLocked()
	}
}

func (s *crashStore) cutLocked() {
	s.durable, s.pending = s.c.Durable(), s.c.Pending()
	s.c.Crash()
}

// after returns the disk after the power cut when the pending writes keep
// picks reached it.
func (s *crashStore) after(keep func(int) bool) []byte {
	b := append([]byte(nil), s.durable...)
	for i, w := range s.pending {
		if keep(i) {
			if w.Data == nil {
				clear(b[w.Off : w.Off+w.Len])
			} else {
				copy(b[w.Off:], w.Data)
			}
		}
	}
	return b
}

func (s *crashStore) Punch(off, n int64) error { return s.c.Trim(off, n) }
func (s *crashStore) Close() error             { return nil }
func (s *crashStore) Name() string             { return s.path }
func (s *crashStore) Dir() (string, error)     { return filepath.Dir(s.path), nil }
func (s *crashStore) Truncate(n int64) error   { return errors.New("crashStore: no truncate") }
func (s *crashStore) Size() (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.size, nil
}

// TestPowerLoss cuts the power at random points: every write not covered
// by a sync may or may not survive, in any combination. qemu-img check
// must find no corruption, and every write flushed before the cut must
// read back.
func TestPowerLoss(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	const (
		size     = 2 << 20
		capacity = 8 << 20
	)
	rounds := 24
	if testing.Short() {
		rounds = 6
	}
	for round := range rounds {
		seed := uint64(round + 100)
		cs := []int64{4096, 512, 65536, 16384}[round%4]
		opts := map[string]string(nil)
		switch round % 4 {
		case 1:
			opts = map[string]string{"refcount_bits": "64"} // many refcount blocks, table growth
		case 3:
			opts = map[string]string{"extended_l2": "on"}
		}
		lazy := round%3 == 2
		if lazy {
			if opts == nil {
				opts = map[string]string{}
			}
			opts["lazy_refcounts"] = "on"
		}
		t.Run(fmt.Sprintf("round%d-cluster%d-lazy%v", round, cs, lazy), func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, dir, "base.raw", pattern(size, seed))
			p := filepath.Join(dir, "img.qcow2")
			create(t, p, size, cs, opts, "base.raw", "raw")
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			c := blockdevtest.NewCrashable(capacity)
			if _, err := c.WriteAt(b, 0); err != nil {
				t.Fatal(err)
			}
			c.Flush()
			r := rand.New(rand.NewPCG(seed, 1))
			st := &crashStore{path: p, c: c, size: int64(len(b)), crashAt: 1 + r.IntN(80)}
			img, err := OpenFile(st, image.OpenOptions{CacheSize: 8 * cs})
			if err != nil {
				t.Fatal(err)
			}
			blocks := int(img.Size() / crashBlock)
			perm := crashPerm(seed, blocks)
			ops := 20 + r.IntN(blocks-20)
			flushed := 0
			for i := range ops {
				blk, data := crashOp(seed, i, blocks, perm)
				off := int64(blk) * crashBlock
				if data == nil {
					err = img.WriteZeroes(off, crashBlock, true)
				} else {
					_, err = img.WriteAt(data, off)
				}
				if err != nil {
					break // the power went during an eviction's sync
				}
				if r.IntN(10) == 0 {
					if err := img.Flush(); err != nil {
						break
					}
					flushed = i + 1
				}
			}
			st.cut()
			t.Logf("power cut at sync %d of %d, after %d flushed ops, %d writes pending", st.crashAt, st.syncs, flushed, len(st.pending))
			// Which pending writes survived: every one, none, and subsets.
			kr := rand.New(rand.NewPCG(seed, 2))
			keeps := []func(int) bool{func(int) bool { return true }, func(int) bool { return false }}
			for _, p := range []int{10, 50, 90, 50, 50, 50, 30, 70} {
				keeps = append(keeps, func(int) bool { return kr.IntN(100) < p })
			}
			for k, keep := range keeps {
				verifyCrash(t, dir, fmt.Sprintf("crashed%d.qcow2", k), st.after(keep), k < 3, lazy, seed, flushed)
			}
		})
	}
}

// verifyCrash checks one disk after a power cut: no corruption (by vdisk
// check, and by qemu-img check when withQemu), and the first flushed ops
// read back. An image with lazy refcounts is first repaired by opening it
// for writing.
func verifyCrash(t *testing.T, dir, name string, disk []byte, withQemu, lazy bool, seed uint64, flushed int) {
	t.Helper()
	cp := writeFile(t, dir, name, disk)
	if lazy {
		img, err := openPath(cp, image.OpenOptions{})
		if err != nil {
			t.Fatalf("%s: open to repair: %v", name, err)
		}
		if err := img.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if withQemu {
		out, err := exec.Command("qemu-img", "check", cp).CombinedOutput()
		if ee, ok := err.(*exec.ExitError); err != nil && (!ok || ee.ExitCode() != 3) {
			t.Fatalf("%s: qemu-img check after a power cut (%d flushed ops): %v\n%s", name, flushed, err, out)
		}
	}
	res, err := checkPath(cp, image.CheckOptions{})
	if err != nil || res.Corruptions != 0 {
		t.Fatalf("%s: vdisk check after a power cut (%d flushed ops): %v %v", name, flushed, res.Messages, err)
	}
	ri := openImage(t, cp, image.OpenOptions{ReadOnly: true})
	blocks := int(ri.Size() / crashBlock)
	perm := crashPerm(seed, blocks)
	got := make([]byte, crashBlock)
	for i := range flushed {
		blk, data := crashOp(seed, i, blocks, perm)
		if data == nil {
			data = make([]byte, crashBlock)
		}
		if _, err := ri.ReadAt(got, int64(blk)*crashBlock); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("%s: op %d (block %d) flushed but lost after a power cut", name, i, blk)
		}
	}
}
