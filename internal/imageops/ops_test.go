package imageops

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
	_ "vdisk/internal/image/qcow2"
)

const size = 4 << 20

// fill writes the byte b over [off, off+n) of dev.
func fill(t *testing.T, dev blockdev.Device, b byte, off, n int64) {
	t.Helper()
	if _, err := dev.WriteAt(bytes.Repeat([]byte{b}, int(n)), off); err != nil {
		t.Fatal(err)
	}
}

// readAll reads the whole of dev.
func readAll(t *testing.T, dev blockdev.Device) []byte {
	t.Helper()
	b := make([]byte, dev.Size())
	if _, err := dev.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// makeChain makes base.qcow2 ← mid.qcow2 ← top.qcow2 in dir, with
// overlapping data and zeroes, and returns what top reads.
func makeChain(t *testing.T, dir string) []byte {
	t.Helper()
	names := []string{"base.qcow2", "mid.qcow2", "top.qcow2"}
	for i, n := range names {
		opt := image.CreateOptions{Format: "qcow2", Size: size}
		if i > 0 {
			opt.BackingFile, opt.BackingFormat = names[i-1], "qcow2"
		}
		if err := image.Create(filepath.Join(dir, n), opt); err != nil {
			t.Fatal(err)
		}
		dev, err := image.Open(filepath.Join(dir, n), image.OpenOptions{Format: "qcow2", NoBacking: true})
		if err != nil {
			t.Fatal(err)
		}
		fill(t, dev, byte(0x11*(i+1)), int64(i)<<20, 2<<20)
		if i == 2 {
			if err := blockdev.WriteZeroes(dev, 3<<20, 128<<10, false); err != nil {
				t.Fatal(err)
			}
		}
		if err := dev.Close(); err != nil {
			t.Fatal(err)
		}
	}
	top, err := image.Open(filepath.Join(dir, "top.qcow2"), image.OpenOptions{Format: "qcow2", ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer top.Close()
	return readAll(t, top)
}

// openWithBase opens dir/top.qcow2 read-write with the backing file named
// base opened read-write in its chain (image.OpenOptions.BackingOpener).
func openWithBase(t *testing.T, dir, base string) (top, b blockdev.Device) {
	t.Helper()
	hook := func(r *image.BackingRequest) (blockdev.Device, error) {
		if r.Backing.Name != base {
			return r.Open(true)
		}
		d, err := r.Open(false)
		b = d
		return d, err
	}
	top, err := image.Open(filepath.Join(dir, "top.qcow2"), image.OpenOptions{Format: "qcow2", BackingOpener: hook})
	if err != nil {
		t.Fatal(err)
	}
	if b == nil {
		t.Fatalf("%s not opened", base)
	}
	return top, b
}

func TestCommit(t *testing.T) {
	for _, tc := range []struct {
		base string
		drop bool
	}{{"mid.qcow2", false}, {"mid.qcow2", true}, {"base.qcow2", true}} {
		t.Run(tc.base, func(t *testing.T) {
			dir := t.TempDir()
			want := makeChain(t, dir)
			top, base := openWithBase(t, dir, tc.base)
			var done int64
			st, err := Commit(context.Background(), top, base, CommitOptions{Drop: tc.drop, Progress: func(n int64) { done += n }})
			if err != nil {
				t.Fatal(err)
			}
			if done != size || st.Zero != 128<<10 || st.Emptied == tc.drop {
				t.Fatalf("progress %d, stats %+v", done, st)
			}
			if !bytes.Equal(readAll(t, top), want) {
				t.Fatal("the top reads differently after the commit")
			}
			if !bytes.Equal(readAll(t, base), want) {
				t.Fatal("the base does not read as the top did")
			}
			if err := top.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestCommitRefusesALayerOutsideTheChain(t *testing.T) {
	dir := t.TempDir()
	makeChain(t, dir)
	top, _ := openWithBase(t, dir, "mid.qcow2")
	defer top.Close()
	if _, err := Commit(context.Background(), top, blockdev.NewMem(size), CommitOptions{}); err == nil {
		t.Fatal("a commit into a device outside the chain ran")
	}
}

func TestRebase(t *testing.T) {
	for _, onto := range []string{"base.qcow2", ""} {
		t.Run("onto "+onto, func(t *testing.T) {
			dir := t.TempDir()
			want := makeChain(t, dir)
			top, err := image.Open(filepath.Join(dir, "top.qcow2"), image.OpenOptions{Format: "qcow2"})
			if err != nil {
				t.Fatal(err)
			}
			var nb blockdev.Device
			if onto != "" {
				if nb, err = image.Open(filepath.Join(dir, onto), image.OpenOptions{Format: "qcow2", ReadOnly: true}); err != nil {
					t.Fatal(err)
				}
				defer nb.Close()
			}
			if _, err := Rebase(context.Background(), top, nb, RebaseOptions{}); err != nil {
				t.Fatal(err)
			}
			format := ""
			if onto != "" {
				format = "qcow2"
			}
			if err := top.(BackingSetter).SetBacking(onto, format); err != nil {
				t.Fatal(err)
			}
			if err := top.Close(); err != nil {
				t.Fatal(err)
			}
			again, err := image.Open(filepath.Join(dir, "top.qcow2"), image.OpenOptions{Format: "qcow2", ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer again.Close()
			if !bytes.Equal(readAll(t, again), want) {
				t.Fatal("the rebased top reads differently")
			}
		})
	}
}
