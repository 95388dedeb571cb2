package qcow2

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"vdisk/internal/image"
	"vdisk/internal/image/imagetest"
)

// The crash child: TestMain runs crashChild instead of the tests when
// crashEnv names an image.
const crashEnv = "VDISK_QCOW2_CRASH_CHILD"

// crashBlock is the size of the blocks the crash child writes; it is not
// a multiple of any cluster size, so blocks straddle clusters.
const crashBlock = 5000

func TestMain(m *testing.M) {
	if p := os.Getenv(crashEnv); p != "" {
		seed, _ := strconv.ParseUint(os.Getenv(crashEnv+"_SEED"), 10, 64)
		if err := crashChild(p, seed); err != nil {
			fmt.Fprintln(os.Stderr, "crash child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// crashOp returns what op i of a run with seed does: the block it touches,
// and its data (nil: WriteZeroes).
func crashOp(seed uint64, i int, blocks int, perm []int) (int, []byte) {
	r := rand.New(rand.NewPCG(seed, uint64(i)))
	if r.IntN(6) == 0 {
		return perm[i%len(perm)], nil
	}
	b := make([]byte, crashBlock)
	for k := range b {
		b[k] = byte(r.Uint32() | 1)
	}
	return perm[i%len(perm)], b
}

func crashPerm(seed uint64, blocks int) []int {
	return rand.New(rand.NewPCG(seed, 99)).Perm(blocks)
}

// crashChild writes blocks in order, flushing every few ops and reporting
// "flushed N" (ops 0..N-1 are durable) on stdout, until it is killed.
func crashChild(p string, seed uint64) error {
	img, err := openPath(p, image.OpenOptions{CacheSize: 16 << 10})
	if err != nil {
		return err
	}
	blocks := int(img.Size() / crashBlock)
	perm := crashPerm(seed, blocks)
	out := bufio.NewWriter(os.Stdout)
	for i := 0; i < blocks; i++ {
		blk, data := crashOp(seed, i, blocks, perm)
		off := int64(blk) * crashBlock
		if data == nil {
			err = img.WriteZeroes(off, crashBlock, true)
		} else {
			_, err = img.WriteAt(data, off)
		}
		if err != nil {
			return err
		}
		if i%7 == 6 {
			if err := img.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(out, "flushed %d\n", i+1)
			out.Flush()
		}
	}
	fmt.Fprintln(out, "done")
	out.Flush()
	select {} // wait to be killed
}

// TestCrash kills a writing child process with SIGKILL at random points:
// qemu-img check must find no corruption (leaks are allowed), and every
// write flushed before the kill must read back.
func TestCrash(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	rounds := 12
	if testing.Short() {
		rounds = 3
	}
	for round := range rounds {
		seed := uint64(round + 1)
		cs := []int64{4096, 512, 65536}[round%3]
		opts := map[string]string(nil)
		if round%4 == 3 {
			opts = map[string]string{"extended_l2": "on"}
			cs = 16384
		}
		t.Run(fmt.Sprintf("round%d-cluster%d", round, cs), func(t *testing.T) {
			dir := t.TempDir()
			const size = 2 << 20
			base := pattern(size, seed)
			writeFile(t, dir, "base.raw", base)
			p := filepath.Join(dir, "img.qcow2")
			create(t, p, size, cs, opts, "base.raw", "raw")
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), crashEnv+"="+p, crashEnv+"_SEED="+strconv.FormatUint(seed, 10))
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			r := rand.New(rand.NewPCG(seed, 7))
			killAfter := 1 + r.IntN(40)
			flushed := 0
			sc := bufio.NewScanner(stdout)
			for n := 0; n < killAfter && sc.Scan(); n++ {
				if _, err := fmt.Sscanf(sc.Text(), "flushed %d", &flushed); err != nil {
					break // "done"
				}
			}
			cmd.Process.Kill()
			cmd.Wait()
			if flushed == 0 {
				t.Fatalf("child flushed nothing; stderr: %s", stderr.String())
			}
			out, err := exec.Command("qemu-img", "check", p).CombinedOutput()
			if ee, ok := err.(*exec.ExitError); err != nil && (!ok || ee.ExitCode() != 3) {
				t.Fatalf("qemu-img check after kill at %d flushed ops: %v\n%s", flushed, err, out)
			}
			img := openImage(t, p, image.OpenOptions{ReadOnly: true, NoLock: true})
			blocks := int(img.Size() / crashBlock)
			perm := crashPerm(seed, blocks)
			want := map[int][]byte{}
			for i := range flushed {
				blk, data := crashOp(seed, i, blocks, perm)
				if data == nil {
					data = make([]byte, crashBlock)
				}
				want[blk] = data
			}
			got := make([]byte, crashBlock)
			for blk, data := range want {
				if _, err := img.ReadAt(got, int64(blk)*crashBlock); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, data) {
					t.Fatalf("block %d lost after a kill at %d flushed ops", blk, flushed)
				}
			}
			t.Logf("killed after %d flushed ops; qemu-img check: ok", flushed)
		})
	}
}
