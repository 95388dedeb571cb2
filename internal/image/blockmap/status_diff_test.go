package blockmap_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"vdisk/internal/image"
	"vdisk/internal/image/imagetest"
)

// span is a range of the guest disk [off, off+n).
type span struct{ off, n int64 }

// TestMapDifferencing makes a parent with qemu-img and qemu-io, a
// differencing child of ours over it (vhd, vhdx, vmdk; image.Create with
// a backing file), writes into the child, and checks image.Map of the
// child: the runs the child holds (the written ranges rounded out to its
// unit: a sector of a partial VHD or VHDX block, a grain of vmdk, which
// copies the rest of the grain up) are depth 0, present data at an offset
// of the child's file that holds their bytes; every other run is the
// parent's, depth 1, as qemu-img map says of the parent. Opened without
// its parent, the child's other runs are depth 0 and not present (zeroes
// for vmdk, which reads them so, as qemu does).
func TestMapDifferencing(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	imagetest.NeedTool(t, "qemu-io")
	writes := []span{{1000, 100}, {4095, 2}, {2<<20 - 700, 1500}, {5<<20 + 100, 64 << 10}, {20 << 20, 3 << 20}, {63<<20 + 512, 512}}
	for _, c := range []struct {
		name, format, qemu, file string
		opts                     string // of the parent
		unit                     int64
		ownZero                  bool // the child without its parent reads its unallocated runs as zeroes
	}{
		{name: "vhd", format: "vhd", qemu: "vpc", file: "x.vhd", opts: "subformat=dynamic", unit: 512},
		{name: "vhdx", format: "vhdx", qemu: "vhdx", file: "x.vhdx", opts: "block_size=1M", unit: 512},
		{name: "vmdk", format: "vmdk", qemu: "vmdk", file: "x.vmdk", unit: 64 << 10, ownZero: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			parent := filepath.Join(dir, "base-"+c.file)
			args := []string{"create", "-q", "-f", c.qemu}
			if c.opts != "" {
				args = append(args, "-o", c.opts)
			}
			imagetest.Run(t, "qemu-img", append(args, parent, "64M")...)
			for _, cmd := range scattered {
				imagetest.Run(t, "qemu-io", "-f", c.qemu, "-c", cmd, parent)
			}
			pmap := qemuMap(t, "qemu-img", c.qemu, parent)
			child := filepath.Join(dir, c.file)
			if err := image.Create(child, image.CreateOptions{Format: c.format, BackingFile: filepath.Base(parent)}); err != nil {
				t.Fatal(err)
			}
			d, err := image.Open(child, image.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			var own []span // the child's runs, rounded out to its unit
			for i, w := range writes {
				if _, err := d.WriteAt(bytes.Repeat([]byte{byte(0xa0 + i)}, int(w.n)), w.off); err != nil {
					t.Fatal(err)
				}
				lo, hi := w.off/c.unit*c.unit, (w.off+w.n+c.unit-1)/c.unit*c.unit
				if k := len(own) - 1; k >= 0 && own[k].off+own[k].n >= lo {
					own[k].n = max(own[k].off+own[k].n, hi) - own[k].off
				} else {
					own = append(own, span{lo, hi - lo})
				}
			}
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			inOwn := func(off, n int64) int { // 1 inside a run of the child, 0 outside all, -1 across
				for _, s := range own {
					switch {
					case off >= s.off && off+n <= s.off+s.n:
						return 1
					case off < s.off+s.n && off+n > s.off:
						return -1
					}
				}
				return 0
			}

			d, err = image.Open(child, image.OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			got := ourMap(t, child, image.OpenOptions{})
			var at, held int64
			for _, e := range got {
				if e.Start != at || e.Length <= 0 {
					t.Fatalf("entry %+v does not start at %d", e, at)
				}
				at += e.Length
				switch inOwn(e.Start, e.Length) {
				case -1:
					t.Errorf("entry %+v straddles a run of the child %v", e, own)
				case 1:
					held += e.Length
					if e.Depth != 0 || !e.Present || !e.Data || e.Zero || !e.HasOffset || e.File != child {
						t.Errorf("entry %+v of the child: want depth 0, present data at an offset of %s", e, child)
						continue
					}
					want := make([]byte, e.Length)
					if _, err := d.ReadAt(want, e.Start); err != nil {
						t.Fatal(err)
					}
					f, err := os.Open(child)
					if err != nil {
						t.Fatal(err)
					}
					b := make([]byte, e.Length)
					_, err = f.ReadAt(b, e.Offset)
					f.Close()
					if err != nil || !bytes.Equal(b, want) {
						t.Errorf("entry %+v: the child's file at its offset does not hold its bytes (%v)", e, err)
					}
				default:
					parentSays(t, e, pmap)
				}
			}
			if at != d.Size() {
				t.Errorf("map covers %d bytes of %d", at, d.Size())
			}
			var want int64
			for _, s := range own {
				want += s.n
			}
			if held != want {
				t.Errorf("the child holds %d bytes in the map, %d written (rounded out): %v", held, want, own)
			}

			for _, e := range ourMap(t, child, image.OpenOptions{NoBacking: true}) {
				if inOwn(e.Start, e.Length) != 0 {
					continue
				}
				if e.Depth != 0 || e.Present || e.Data || e.HasOffset || e.Zero != c.ownZero {
					t.Errorf("without its parent, entry %+v: want depth 0, not present, zero %v", e, c.ownZero)
				}
			}
		})
	}
}

// parentSays checks that the child's entry e, a run of the parent, is
// depth 1 and inside one entry of the parent's qemu-img map, with its
// flags and, at the same distance, its offset.
func parentSays(t *testing.T, e image.MapEntry, pmap []qemuEntry) {
	t.Helper()
	for _, p := range pmap {
		if e.Start < p.Start || e.Start >= p.Start+p.Length {
			continue
		}
		ok := e.Depth == 1 && e.Start+e.Length <= p.Start+p.Length && e.Present == p.Present && e.Zero == p.Zero &&
			e.Data == p.Data && e.HasOffset == (p.Offset != nil) && (p.Offset == nil || e.Offset == *p.Offset+e.Start-p.Start)
		if !ok {
			t.Errorf("entry %+v of the parent: qemu-img map of the parent says %s", e, fmtQemu([]qemuEntry{p}))
		}
		return
	}
	t.Errorf("entry %+v: not in the parent's map", e)
}
