package vhdx

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"vdisk/internal/image/imagetest"

	"vdisk/internal/blockdev"
	"vdisk/internal/blockdev/blockdevtest"
	"vdisk/internal/image"
)

// makeDiff turns the dynamic VHDX at child (1 MiB blocks, 512-byte
// sectors, same size as parent) into a differencing disk of parent, as
// Hyper-V would write one: block 0 partially present (some sectors in the
// child, marked in the chunk's sector bitmap), block 2 fully present,
// block 3 zero, the rest from the parent. It returns what the child reads
// as, given the parent's content.
func makeDiff(t *testing.T, child, parent string, parentRaw []byte) []byte {
	t.Helper()
	le := binary.LittleEndian
	f, err := os.OpenFile(child, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img := loadPath(t, child)
	pimg := loadPath(t, parent)
	meta := img.metaReg.off
	var flags [4]byte
	le.PutUint32(flags[:], 2) // has parent
	f.WriteAt(flags[:], meta+metaTabSize+4)
	abs, _ := filepath.Abs(parent)
	loc := encodeLocator([][2]string{
		{"parent_linkage", pimg.hdrs[pimg.cur].dataWrite.String()},
		{"relative_path", `.\` + filepath.Base(parent)},
		{"absolute_win32_path", abs},
	})
	locOff := int64(metaTabSize + 4096)
	f.WriteAt(loc, meta+locOff)
	e := make([]byte, 32)
	copy(e, metaParentLoc[:])
	le.PutUint32(e[16:], uint32(locOff))
	le.PutUint32(e[20:], uint32(len(loc)))
	le.PutUint32(e[24:], 6)
	f.WriteAt(e, meta+32+32*5)
	var cnt [2]byte
	le.PutUint16(cnt[:], 6)
	f.WriteAt(cnt[:], meta+10)

	want := append([]byte(nil), parentRaw...)
	r := rand.New(rand.NewPCG(77, 78))
	st, _ := f.Stat()
	a := (st.Size() + mib - 1) / mib * mib // block 0, partially present
	b := a + mib                           // chunk 0's sector bitmap
	c := b + mib                           // block 2, fully present
	block0 := make([]byte, mib)
	block2 := make([]byte, mib)
	for i := range block0 {
		block0[i], block2[i] = byte(r.Uint32()), byte(r.Uint32())
	}
	bitmap := make([]byte, mib)
	for _, run := range [][2]int64{{2, 10}, {100, 101}, {1000, 1100}, {2040, 2048}} {
		for s := run[0]; s < run[1]; s++ {
			bitmap[s/8] |= 1 << (s % 8)
			copy(want[s*512:(s+1)*512], block0[s*512:])
		}
	}
	copy(want[2*mib:3*mib], block2)
	clear(want[3*mib : 4*mib])
	f.WriteAt(block0, a)
	f.WriteAt(bitmap, b)
	f.WriteAt(block2, c)
	bat := make([]byte, 8*(img.cr+1))
	le.PutUint64(bat[0:], uint64(a/mib)<<batOffsetShift|statePartPresent)
	le.PutUint64(bat[16:], uint64(c/mib)<<batOffsetShift|stateFullPresent)
	le.PutUint64(bat[24:], stateZero)
	le.PutUint64(bat[8*img.cr:], uint64(b/mib)<<batOffsetShift|stateBitmapHere)
	f.WriteAt(bat, img.batReg.off)
	return want
}

// TestDifferencingRead reads a crafted differencing disk over a parent
// vdisk wrote: sector bitmaps, fully present, zero and absent blocks, the
// parent found through relative_path, and --no-backing.
func TestDifferencingRead(t *testing.T) {
	dir := t.TempDir()
	parent := filepath.Join(dir, "parent.vhdx")
	child := filepath.Join(dir, "child.vhdx")
	const size = 9 << 20
	for _, p := range []string{parent, child} {
		if err := createPath(p, image.CreateOptions{Format: Name, Size: size, ClusterSize: mib}); err != nil {
			t.Fatal(err)
		}
	}
	pd, err := openPath(parent, image.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	parentRaw := make([]byte, size)
	imagetest.RandomWrites(t, pd, parentRaw, 31, 30, 400<<10)
	if err := pd.Close(); err != nil {
		t.Fatal(err)
	}
	want := makeDiff(t, child, parent, parentRaw)

	d, err := openPath(child, image.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	imagetest.MustEqual(t, "child", imagetest.ReadAll(t, d), want)
	ext, err := d.Extents(0, size)
	if err != nil {
		t.Fatal(err)
	}
	at := func(off int64) blockdev.ExtentFlags {
		for _, x := range ext {
			if x.Off <= off && off < x.Off+x.Len {
				return x.Flags
			}
		}
		t.Fatalf("no extent covers %d: %v", off, ext)
		return 0
	}
	if f := at(3*mib + 1); f&blockdev.ExtentZero == 0 {
		t.Errorf("zero block reported with flags %v", f)
	}
	if f := at(2*mib + 1); f != 0 {
		t.Errorf("present block reported with flags %v", f)
	}
	if f := at(5*mib + 1); f&blockdev.ExtentHole == 0 {
		t.Errorf("block from the parent reported with flags %v", f)
	}
	d.Close()

	nb, err := openPath(child, image.OpenOptions{ReadOnly: true, NoBacking: true})
	if err != nil {
		t.Fatal(err)
	}
	got := imagetest.ReadAll(t, nb)
	nb.Close()
	imagetest.MustEqual(t, "child block 2 without its parent", got[2*mib:3*mib], want[2*mib:3*mib])
	if !blockdev.IsZero(got[5*mib:]) || !blockdev.IsZero(got[:1024]) {
		t.Error("unallocated sectors read non-zero without the parent")
	}
	fa, err := infoPath(child)
	if err != nil || fa.BackingFile != `.\parent.vhdx` || fa.BackingFormat != Name {
		t.Fatalf("Info %+v, %v", fa, err)
	}
	if r, err := checkPath(child, image.CheckOptions{}); err != nil || !r.Clean() || r.AllocatedClusters != 2 {
		t.Fatalf("Check %+v, %v", r, err)
	}
	// Elsewhere, the child finds no parent at relative_path, and the one
	// at absolute_win32_path is outside its directory unless trusted.
	moved := filepath.Join(t.TempDir(), "child.vhdx")
	if err := os.WriteFile(moved, imagetest.ReadFile(t, child), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := openPath(moved, image.OpenOptions{ReadOnly: true}); !errors.Is(err, image.ErrBackingRefused) || !strings.Contains(err.Error(), image.BackingDirFlag) {
		t.Fatalf("parent outside the child's directory: %v", err)
	}
	d, err = openPath(moved, image.OpenOptions{ReadOnly: true, BackingDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	imagetest.MustEqual(t, "moved child", imagetest.ReadAll(t, d), want)
	d.Close()
}

// TestDifferencingWrite creates a differencing disk over a parent with
// vdisk, writes into it at random (unaligned, across sectors and blocks,
// four goroutines), zeroes and trims, and checks that it reads as the
// parent overlaid with the writes, before and after a reopen, that the
// parent is unchanged, and that a crash before Flush keeps what was
// flushed.
func TestDifferencingWrite(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	dir := t.TempDir()
	parent := filepath.Join(dir, "parent.vhdx")
	const size = 9 << 20
	if err := createPath(parent, image.CreateOptions{Format: Name, Size: size, ClusterSize: mib}); err != nil {
		t.Fatal(err)
	}
	pd, err := openPath(parent, image.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	parentRaw := make([]byte, size)
	imagetest.RandomWrites(t, pd, parentRaw, 41, 30, 400<<10)
	if err := pd.Close(); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "sub")
	os.Mkdir(sub, 0o755)
	child := filepath.Join(sub, "child.vhdx")
	if err := createPath(child, image.CreateOptions{Format: Name, BackingFile: "../parent.vhdx", ClusterSize: mib, Names: image.LocalNames{Dirs: []string{dir}}}); err != nil {
		t.Fatal(err)
	}
	fa, err := infoPath(child)
	if err != nil || fa.BackingFile != `.\..\parent.vhdx` || fa.VirtualSize != size {
		t.Fatalf("Info %+v, %v", fa, err)
	}
	d, err := openPath(child, image.OpenOptions{BackingDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	ref := append([]byte(nil), parentRaw...)
	imagetest.MustEqual(t, "fresh child", imagetest.ReadAll(t, d), ref)
	q := int64(size) / 4
	var wg sync.WaitGroup
	for i := range int64(4) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			imagetest.RandomWrites(t, blockdev.Section(nopClose{d}, i*q, q), ref[i*q:(i+1)*q], uint64(50+i), 30, 200<<10)
		}()
	}
	wg.Wait()
	if err := blockdev.Trim(d, 3<<20+1000, 1<<20); err != nil {
		t.Fatal(err)
	}
	clear(ref[3<<20+1000 : 4<<20+1000])
	imagetest.MustEqual(t, "written child", imagetest.ReadAll(t, d), ref)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d, err = openPath(child, image.OpenOptions{ReadOnly: true, BackingDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	imagetest.MustEqual(t, "reopened child", imagetest.ReadAll(t, d), ref)
	d.Close()
	imagetest.MustEqual(t, "parent untouched", imagetest.QemuRaw(t, parent, "vhdx"), parentRaw)
	if r, err := checkPath(child, image.CheckOptions{}); err != nil || !r.Clean() {
		t.Fatalf("Check %+v, %v", r, err)
	}

	// A crash on a fresh child: flushed writes stay; the block allocated
	// after the last Flush is not referenced, so the parent shows again.
	crash := filepath.Join(sub, "crash.vhdx")
	if err := createPath(crash, image.CreateOptions{Format: Name, BackingFile: "../parent.vhdx", ClusterSize: mib, Names: image.LocalNames{Dirs: []string{dir}}}); err != nil {
		t.Fatal(err)
	}
	d, err = openPath(crash, image.OpenOptions{BackingDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte(nil), parentRaw...)
	if _, err := d.WriteAt([]byte("flushed"), 8<<20+3); err != nil {
		t.Fatal(err)
	}
	copy(want[8<<20+3:], "flushed")
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt([]byte("lost"), 7<<20+5); err != nil {
		t.Fatal(err)
	}
	d.f.Close() // no Flush
	d, err = openPath(crash, image.OpenOptions{ReadOnly: true, BackingDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	imagetest.MustEqual(t, "after the crash", imagetest.ReadAll(t, d), want)
	if r, err := checkPath(crash, image.CheckOptions{}); err != nil || !r.Clean() {
		t.Fatalf("Check after the crash %+v, %v", r, err)
	}
}

// TestDifferencingConformance runs the blockdev conformance suite on a
// differencing disk over a written parent.
func TestDifferencingConformance(t *testing.T) {
	blockdevtest.Run(t, func(t *testing.T, size int64) blockdev.Device {
		dir := t.TempDir()
		parent := filepath.Join(dir, "parent.vhdx")
		if err := createPath(parent, image.CreateOptions{Format: Name, Size: size, ClusterSize: mib}); err != nil {
			t.Fatal(err)
		}
		pd, err := openPath(parent, image.OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		imagetest.RandomWrites(t, pd, make([]byte, size), 61, 20, 64<<10)
		if err := pd.Close(); err != nil {
			t.Fatal(err)
		}
		child := filepath.Join(dir, "child.vhdx")
		if err := createPath(child, image.CreateOptions{Format: Name, BackingFile: "parent.vhdx", ClusterSize: mib}); err != nil {
			t.Fatal(err)
		}
		d, err := openPath(child, image.OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return d
	})
}

// TestHostileBitmaps refuses differencing disks whose sector bitmap
// entries are damaged: outside the file, of a bad state, over the
// metadata or a payload block; a partially present block whose chunk
// has no bitmap fails at the read that meets it.
func TestHostileBitmaps(t *testing.T) {
	dir := t.TempDir()
	parent := filepath.Join(dir, "parent.vhdx")
	child := filepath.Join(dir, "child.vhdx")
	for _, p := range []string{parent, child} {
		if err := createPath(p, image.CreateOptions{Format: Name, Size: 9 << 20, ClusterSize: mib}); err != nil {
			t.Fatal(err)
		}
	}
	makeDiff(t, child, parent, make([]byte, 9<<20))
	img := loadPath(t, child)
	orig, err := os.ReadFile(child)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	at := img.batReg.off + 8*img.cr
	block0, _ := img.Lookup(0)
	for _, tc := range []struct {
		name   string
		entry  uint64
		want   string
		atRead bool
	}{
		{"outside", 4000<<batOffsetShift | stateBitmapHere, "sector bitmap entry 4096 points at", false},
		{"state", le.Uint64(orig[at:])&^7 | 3, "sector bitmap entry 4096 has state 3", false},
		{"on-metadata", uint64(img.metaReg.off/mib)<<batOffsetShift | stateBitmapHere, "overlap", false},
		{"on-block", uint64(block0.Off/mib)<<batOffsetShift | stateBitmapHere, "overlaps the image metadata", false},
		{"absent", stateBitmapAbsent, "has no sector bitmap", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := bytes.Clone(orig)
			le.PutUint64(b[at:], tc.entry)
			d, err := image.OpenFile(newMemFile(b), image.OpenOptions{Format: Name, ReadOnly: true, NoBacking: true, Names: image.NoNames{Why: "test"}})
			if tc.atRead {
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				_, err = d.ReadAt(make([]byte, 4096), 0)
				d.Close()
			} else if err == nil {
				d.Close()
				t.Fatal("opened")
			}
			if !errors.Is(err, blockdev.ErrCorrupt) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v; want %q", err, tc.want)
			}
		})
	}
}
