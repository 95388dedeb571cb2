package qcow2

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
	"vdisk/internal/image/imagetest"
)

// qemuInfo returns qemu-img info --output json for path.
func qemuInfo(t *testing.T, path string) map[string]any {
	t.Helper()
	out, err := exec.Command("qemu-img", "info", "-U", "--output", "json", path).Output()
	if err != nil {
		t.Fatalf("qemu-img info: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestInfoMatchesQemu compares Info with qemu-img info on images with
// every option, a backing file and snapshots.
func TestInfoMatchesQemu(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	writeFile(t, dir, "base.raw", pattern(1<<20, 5))
	for _, args := range [][]string{
		{"-o", "compat=0.10"},
		{"-o", "cluster_size=4k,refcount_bits=8,lazy_refcounts=on"},
		{"-o", "extended_l2=on,compression_type=zstd"},
		{"-b", base, "-F", "raw"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "img.qcow2")
			imagetest.Run(t, "qemu-img", append(append([]string{"create", "-q", "-f", "qcow2"}, args...), p, "3M")...)
			imagetest.Run(t, "qemu-img", "snapshot", "-c", "first", p)
			fa, err := infoPath(p)
			if err != nil {
				t.Fatal(err)
			}
			m := qemuInfo(t, p)
			spec := m["format-specific"].(map[string]any)["data"].(map[string]any)
			if float64(fa.VirtualSize) != m["virtual-size"] || float64(fa.ClusterSize) != m["cluster-size"] ||
				fa.Compat != spec["compat"] || fa.BackingFile != strOr(m["backing-filename"]) ||
				fa.BackingFormat != strOr(m["backing-filename-format"]) || fa.Dirty != m["dirty-flag"] {
				t.Errorf("facts %+v\nqemu %v", fa, m)
			}
			if fa.Compat == "1.1" && (float64(fa.RefcountBits) != spec["refcount-bits"] || fa.LazyRefcounts != spec["lazy-refcounts"] ||
				fa.ExtendedL2 != spec["extended-l2"] || fa.CompressionType != spec["compression-type"]) {
				t.Errorf("facts %+v\nqemu %v", fa, spec)
			}
			snaps := m["snapshots"].([]any)
			if len(fa.Snapshots) != 1 || fa.Snapshots[0].Name != snaps[0].(map[string]any)["name"] ||
				float64(fa.Snapshots[0].DateSec) != snaps[0].(map[string]any)["date-sec"] {
				t.Errorf("snapshots %+v, qemu %v", fa.Snapshots, snaps)
			}
		})
	}
}

func strOr(v any) string {
	s, _ := v.(string)
	return s
}

// TestLazyRefcounts checks that an image with lazy refcounts is marked
// dirty while written and clean after Close, and that an image left dirty
// (a copy taken while it was open, as after a crash) is readable, and is
// repaired when opened for writing: qemu-img check finds it clean after.
func TestLazyRefcounts(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	for _, tc := range []struct {
		name string
		cs   int64
		opts map[string]string
	}{
		{"64k", 0, map[string]string{"lazy_refcounts": "on"}},
		{"512-refcount64", 512, map[string]string{"lazy_refcounts": "on", "refcount_bits": "64"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "img.qcow2")
			create(t, p, 4<<20, tc.cs, tc.opts, "", "")
			img, err := openPath(p, image.OpenOptions{CacheSize: 16 << 10})
			if err != nil {
				t.Fatal(err)
			}
			data := pattern(1<<20, 6)
			for i := range data {
				data[i] |= 1
			}
			if _, err := img.WriteAt(data, 0); err != nil {
				t.Fatal(err)
			}
			if err := img.Flush(); err != nil {
				t.Fatal(err)
			}
			if m := qemuInfo(t, p); m["dirty-flag"] != true {
				t.Fatalf("dirty flag not set while writing: %v", m["dirty-flag"])
			}
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			crashed := writeFile(t, dir, "crashed.qcow2", b)
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			if m := qemuInfo(t, p); m["dirty-flag"] != false {
				t.Fatalf("dirty flag still set after close")
			}
			qemuCheck(t, p)

			ro := openImage(t, crashed, image.OpenOptions{ReadOnly: true})
			imagetest.MustEqual(t, "dirty image read", imagetest.ReadAll(t, ro)[:1<<20], data)
			ro.Close()
			rw, err := openPath(crashed, image.OpenOptions{})
			if err != nil {
				t.Fatalf("writable open of a dirty image: %v", err)
			}
			if _, err := rw.WriteAt(data[:300<<10], 2<<20); err != nil {
				t.Fatal(err)
			}
			if err := rw.Close(); err != nil {
				t.Fatal(err)
			}
			if m := qemuInfo(t, crashed); m["dirty-flag"] != false {
				t.Fatalf("dirty flag still set after repair and close")
			}
			qemuCheck(t, crashed)
			got := qemuRaw(t, crashed)
			imagetest.MustEqual(t, "repaired image", got[:1<<20], data)
			imagetest.MustEqual(t, "written after repair", got[2<<20:2<<20+300<<10], data[:300<<10])
		})
	}
}

// TestExtentsMatchQemuMap compares Extents with qemu-img map over a chain
// with data, zero clusters, discarded ranges and a short backing file.
func TestExtentsMatchQemuMap(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	imagetest.NeedTool(t, "qemu-io")
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	imagetest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "2M")
	imagetest.Run(t, "qemu-io", "-c", "write -P 1 0 256k", "-c", "write -z 512k 128k", base)
	top := filepath.Join(dir, "top.qcow2")
	imagetest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top, "4M")
	imagetest.Run(t, "qemu-io", "-c", "write -P 2 128k 256k", "-c", "write -z 1M 64k", "-c", "write -P 3 3M 64k", "-c", "discard 3M 64k", top)
	img := openImage(t, top, image.OpenOptions{ReadOnly: true})
	out, err := exec.Command("qemu-img", "map", "--output", "json", top).Output()
	if err != nil {
		t.Fatal(err)
	}
	var qm []struct {
		Start, Length int64
		Data, Zero    bool
	}
	if err := json.Unmarshal(out, &qm); err != nil {
		t.Fatal(err)
	}
	var ours []blockdev.Extent
	for off := int64(0); off < img.Size(); {
		ex, err := img.Extents(off, img.Size()-off)
		if err != nil {
			t.Fatal(err)
		}
		ours = append(ours, ex...)
		off = ex[len(ex)-1].Off + ex[len(ex)-1].Len
	}
	flagsAt := func(pos int64) blockdev.ExtentFlags {
		for _, e := range ours {
			if pos >= e.Off && pos < e.Off+e.Len {
				return e.Flags
			}
		}
		t.Fatalf("no extent at %d", pos)
		return 0
	}
	for _, q := range qm {
		for pos := q.Start; pos < q.Start+q.Length; pos += 64 << 10 {
			f := flagsAt(pos)
			if (f&blockdev.ExtentZero != 0) != q.Zero || (f == 0) != q.Data {
				t.Errorf("at %d: our flags %b, qemu data=%v zero=%v", pos, f, q.Data, q.Zero)
			}
		}
	}
}

// TestExtentsSparseMatchQemuMap maps an image whose L1 table has holes
// (unallocated L2 tables) and compares the extents with qemu-img map.
func TestExtentsSparseMatchQemuMap(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	imagetest.NeedTool(t, "qemu-io")
	p := filepath.Join(t.TempDir(), "sparse.qcow2")
	imagetest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", p, "3G")
	imagetest.Run(t, "qemu-io", "-c", "write -P 5 2G 128k", "-c", "write -P 6 100M 64k", p)
	img := openImage(t, p, image.OpenOptions{ReadOnly: true})
	out, err := exec.Command("qemu-img", "map", "--output", "json", p).Output()
	if err != nil {
		t.Fatal(err)
	}
	var qm []struct {
		Start, Length int64
		Data, Zero    bool
	}
	if err := json.Unmarshal(out, &qm); err != nil {
		t.Fatal(err)
	}
	var want []blockdev.Extent
	for _, q := range qm {
		f := blockdev.ExtentFlags(0)
		if !q.Data {
			f |= blockdev.ExtentHole
		}
		if q.Zero {
			f |= blockdev.ExtentZero
		}
		if k := len(want) - 1; k >= 0 && want[k].Flags == f {
			want[k].Len += q.Length
		} else {
			want = append(want, blockdev.Extent{Off: q.Start, Len: q.Length, Flags: f})
		}
	}
	var got []blockdev.Extent
	for off := int64(0); off < img.Size(); {
		ex, err := img.Extents(off, img.Size()-off)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ex {
			if k := len(got) - 1; k >= 0 && got[k].Flags == e.Flags {
				got[k].Len += e.Len
			} else {
				got = append(got, e)
			}
		}
		off = ex[len(ex)-1].Off + ex[len(ex)-1].Len
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("extents %v\nqemu-img map %v", got, want)
	}
}
