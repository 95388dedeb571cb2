package qcow2

import (
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/blockdev/blockdevtest"
	"vdisk/internal/image"
	"vdisk/internal/image/imagetest"
)

// create makes a qcow2 image with vdisk's Create.
func create(t *testing.T, path string, size int64, cs int64, opts map[string]string, backing, backingFmt string) {
	t.Helper()
	err := createPath(path, image.CreateOptions{Format: "qcow2", Size: size, ClusterSize: cs, Options: opts,
		BackingFile: backing, BackingFormat: backingFmt})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
}

// model applies the same operations to an Image and to a byte slice.
type model struct {
	img *Image
	mu  sync.Mutex
	ref []byte
}

// op does one random write, zeroing or trim of up to max bytes.
func (m *model) op(t *testing.T, r *rand.Rand, max int64) {
	m.opIn(t, r, 0, int64(len(m.ref)), max)
}

// opIn is op confined to [lo, hi).
func (m *model) opIn(t *testing.T, r *rand.Rand, lo, hi, max int64) {
	n := 1 + r.Int64N(min(max, hi-lo))
	if r.IntN(3) == 0 && n+511 <= hi-lo {
		n = (n + 511) &^ 511
	}
	off := lo + r.Int64N(hi-lo-n+1)
	if r.IntN(2) == 0 && off&^511 >= lo {
		off &^= 511
	}
	switch r.IntN(8) {
	case 0:
		if err := m.img.Trim(off, n); err != nil {
			t.Errorf("trim %d+%d: %v", off, n, err)
		}
		m.mu.Lock()
		clear(m.ref[off : off+n])
		m.mu.Unlock()
	case 1:
		if err := m.img.WriteZeroes(off, n, r.IntN(2) == 0); err != nil {
			t.Errorf("write zeroes %d+%d: %v", off, n, err)
		}
		m.mu.Lock()
		clear(m.ref[off : off+n])
		m.mu.Unlock()
	default:
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		if _, err := m.img.WriteAt(b, off); err != nil {
			t.Errorf("write %d+%d: %v", off, n, err)
		}
		m.mu.Lock()
		copy(m.ref[off:], b)
		m.mu.Unlock()
	}
}

// TestWriteMatchesQemu writes at random (writes, zeroes, trims, four
// goroutines on disjoint quarters) into images vdisk created, with every
// layout option and over backing files, then checks with qemu-img that the
// image is clean and holds exactly what was written.
func TestWriteMatchesQemu(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	const size = 3<<20 + 4096
	tests := []struct {
		name    string
		cs      int64
		opts    map[string]string
		backing string // "", "raw" or "qcow2"
	}{
		{name: "v3-64k"},
		{name: "v2", opts: map[string]string{"compat": "0.10"}},
		{name: "v2-backing", opts: map[string]string{"compat": "0.10"}, backing: "qcow2"},
		{name: "cluster-512-refcount-64", cs: 512, opts: map[string]string{"refcount_bits": "64"}},
		{name: "cluster-1k-refcount-1", cs: 1024, opts: map[string]string{"refcount_bits": "1"}},
		{name: "cluster-2M", cs: 2 << 20},
		{name: "lazy", opts: map[string]string{"lazy_refcounts": "on"}},
		{name: "extl2", opts: map[string]string{"extended_l2": "on"}},
		{name: "extl2-backing", opts: map[string]string{"extended_l2": "on"}, backing: "raw"},
		{name: "raw-backing", backing: "raw"},
		{name: "qcow2-backing-4k", cs: 4096, backing: "qcow2"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "img.qcow2")
			ref := make([]byte, size)
			switch tc.backing {
			case "raw":
				base := pattern(size-64<<10, uint64(i))
				writeFile(t, dir, "base.raw", base)
				copy(ref, base)
				create(t, p, size, tc.cs, tc.opts, "base.raw", "raw")
			case "qcow2":
				base := pattern(size, uint64(i))
				src := writeFile(t, dir, "src.raw", base)
				imagetest.Run(t, "qemu-img", "convert", "-c", "-O", "qcow2", src, filepath.Join(dir, "base.qcow2"))
				copy(ref, base)
				create(t, p, 0, tc.cs, tc.opts, "base.qcow2", "")
			default:
				create(t, p, size, tc.cs, tc.opts, "", "")
			}
			qemuCheck(t, p)
			img, err := openPath(p, image.OpenOptions{CacheSize: 64 << 10})
			if err != nil {
				t.Fatal(err)
			}
			m := &model{img: img, ref: ref}
			var wg sync.WaitGroup
			// Four writers on disjoint quarters whose borders fall inside
			// clusters and subclusters.
			const quarter = size / 4
			for g := range int64(4) {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r := rand.New(rand.NewPCG(uint64(i), uint64(g)))
					for k := range 100 {
						m.opIn(t, r, g*quarter, (g+1)*quarter, 100<<10)
						if k%50 == 0 {
							if err := img.Flush(); err != nil {
								t.Errorf("flush: %v", err)
							}
						}
					}
				}()
			}
			wg.Wait()
			imagetest.MustEqual(t, "read before close", imagetest.ReadAll(t, img), m.ref)
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			qemuCheck(t, p)
			if res, err := checkPath(p, image.CheckOptions{}); err != nil || !res.Clean() {
				t.Fatalf("vdisk check: %v %v", res.Messages, err)
			}
			refPath := writeFile(t, dir, "ref.raw", m.ref)
			imagetest.Run(t, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", p, refPath)
			imagetest.MustEqual(t, "qemu-img read", qemuRaw(t, p), m.ref)
		})
	}
}

// TestParallelWrites writes disjoint clusters from many goroutines and
// checks the result with qemu-img.
func TestParallelWrites(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	const size = 8 << 20
	p := filepath.Join(t.TempDir(), "img.qcow2")
	create(t, p, size, 4096, nil, "", "")
	img := openImage(t, p, image.OpenOptions{CacheSize: 32 << 10})
	ref := make([]byte, size)
	var wg sync.WaitGroup
	const workers = 8
	for g := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(7, uint64(g)))
			for k := range 300 {
				// Worker g owns every cluster c with c%workers == g.
				c := int64(r.IntN(size/4096/workers))*workers + int64(g)
				off := c*4096 + int64(r.IntN(3))*1024
				b := make([]byte, 1024+r.IntN(2)*1024)
				for i := range b {
					b[i] = byte(k + g)
				}
				if _, err := img.WriteAt(b, off); err != nil {
					t.Errorf("write: %v", err)
					return
				}
				copy(ref[off:], b)
			}
		}()
	}
	wg.Wait()
	imagetest.MustEqual(t, "read", imagetest.ReadAll(t, img), ref)
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, p)
	imagetest.MustEqual(t, "qemu-img read", qemuRaw(t, p), ref)
}

// TestRefcountTableGrows writes enough 512-byte clusters with 64-bit
// refcounts that the refcount table must be replaced several times.
func TestRefcountTableGrows(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	const size = 6 << 20
	p := filepath.Join(t.TempDir(), "img.qcow2")
	create(t, p, size, 512, map[string]string{"refcount_bits": "64"}, "", "")
	img := openImage(t, p, image.OpenOptions{})
	before := img.h.refTableOff
	data := pattern(size, 3)
	for i := range data {
		data[i] |= 1 // no zero clusters: everything is allocated
	}
	if _, err := img.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if img.h.refTableOff == before {
		t.Fatalf("refcount table did not move")
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, p)
	imagetest.MustEqual(t, "qemu-img read", qemuRaw(t, p), data)
}

// TestWriteOverSnapshot writes into an image with an internal snapshot:
// shared L2 tables and clusters are copied, the snapshot keeps its data.
func TestWriteOverSnapshot(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	dir := t.TempDir()
	const size = 2 << 20
	base := pattern(size, 4)
	src := writeFile(t, dir, "src.raw", base)
	p := filepath.Join(dir, "img.qcow2")
	imagetest.Run(t, "qemu-img", "convert", "-O", "qcow2", "-o", "cluster_size=4k", src, p)
	imagetest.Run(t, "qemu-img", "snapshot", "-c", "snap1", p)
	img := openImage(t, p, image.OpenOptions{})
	if got := img.Facts().Snapshots; len(got) != 1 || got[0].Name != "snap1" {
		t.Fatalf("snapshots %+v, want snap1", got)
	}
	ref := append([]byte(nil), base...)
	m := &model{img: img, ref: ref}
	r := rand.New(rand.NewPCG(1, 2))
	for range 100 {
		m.op(t, r, 20<<10)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, p)
	if res, err := checkPath(p, image.CheckOptions{}); err != nil || !res.Clean() {
		t.Fatalf("vdisk check: %v %v", res.Messages, err)
	}
	imagetest.MustEqual(t, "active layer", qemuRaw(t, p), ref)
	imagetest.Run(t, "qemu-img", "snapshot", "-a", "snap1", p)
	qemuCheck(t, p)
	imagetest.MustEqual(t, "snapshot", qemuRaw(t, p), base)
}

// TestConformance runs the blockdev conformance suite on qcow2 images,
// alone and over a backing file.
func TestConformance(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cs      int64
		opts    map[string]string
		backing bool
	}{
		{name: "v3"}, {name: "v2", opts: map[string]string{"compat": "0.10"}},
		{name: "extl2", opts: map[string]string{"extended_l2": "on"}},
		{name: "512", cs: 512}, {name: "backing", backing: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			blockdevtest.Run(t, func(t *testing.T, size int64) blockdev.Device {
				dir := t.TempDir()
				p := filepath.Join(dir, "img.qcow2")
				if tc.backing {
					writeFile(t, dir, "base.raw", pattern(size, 9))
					create(t, p, size, tc.cs, tc.opts, "base.raw", "raw")
				} else {
					create(t, p, size, tc.cs, tc.opts, "", "")
				}
				img, err := openPath(p, image.OpenOptions{})
				if err != nil {
					t.Fatal(err)
				}
				return img
			})
		})
	}
}

func TestCreateRefusesExisting(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	err := createPath(p, image.CreateOptions{Format: "qcow2", Size: 1 << 20})
	if !errors.Is(err, os.ErrExist) {
		t.Fatalf("create over an existing file: %v, want ErrExist", err)
	}
	if st, err := os.Stat(p); err != nil || st.Size() != 0 {
		t.Fatalf("existing file changed: %v %v", st, err)
	}
}
