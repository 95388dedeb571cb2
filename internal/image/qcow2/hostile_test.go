package qcow2

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
	"vdisk/internal/image/imagetest"
)

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func be64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// patch writes b at off in f.
func patch(t *testing.T, f image.File, off int64, b []byte) {
	t.Helper()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// hostileFile is a fresh 1 MiB-long qcow2 file in memory of a 1 MiB disk
// with 64 KiB clusters: header, refcount table, refcount block, L1
// table, then zeroes.
func hostileFile(t *testing.T) *imagetest.MemFile {
	t.Helper()
	f := imagetest.NewMemFile("hostile.qcow2", nil)
	if err := CreateFile(f, image.CreateOptions{Format: "qcow2", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 20); err != nil {
		t.Fatal(err)
	}
	return f
}

// bitmapsExt replaces the header extensions with a bitmaps extension of
// nb bitmaps and a directory of size bytes at 0x40000, and sets the
// bitmaps autoclear bit.
func bitmapsExt(t *testing.T, f image.File, nb uint32, size uint64) {
	patch(t, f, 88, be64(autoclearBitmaps))
	ext := append(be32(extBitmaps), be32(24)...)
	ext = append(append(append(ext, be32(nb)...), be32(0)...), be64(size)...)
	ext = append(append(ext, be64(0x40000)...), make([]byte, 8)...)
	patch(t, f, 112, ext)
}

// snapshotAt writes n snapshot entries at 0x40000, each with an L1
// table of l1Size entries at l1Off and extra bytes of extra data, and
// points the header at them.
func snapshotAt(t *testing.T, f image.File, l1Off uint64, l1Size, extra uint32, n int) {
	e := append(be64(l1Off), be32(l1Size)...)
	e = append(append(e, be16(1)...), be16(1)...)
	e = append(append(e, make([]byte, 20)...), be32(extra)...)
	e = append(e, "1s\x00\x00\x00\x00\x00\x00"...)
	for i := range n {
		patch(t, f, 0x40000+int64(i*len(e)), e)
	}
	patch(t, f, 60, append(be32(uint32(n)), be64(0x40000)...))
}

// TestHostileImages opens damaged and malicious images, each a 1 MiB file
// in memory: each must be refused (or its bad metadata reported on read,
// or by InfoFile) with an error naming the problem, never a panic, a hang
// or a large allocation: opening, describing and checking it allocates
// less than 64 MiB whatever its header claims.
func TestHostileImages(t *testing.T) {
	const (
		open = iota // OpenFile fails
		read        // OpenFile succeeds; reading the first cluster fails
		info        // InfoFile fails (OpenFile reads no snapshot table)
	)
	tests := []struct {
		name    string
		damage  func(t *testing.T, f image.File)
		is      error
		message string
		via     int
	}{
		{name: "bad magic", damage: func(t *testing.T, f image.File) { patch(t, f, 0, []byte("QFI\x00")) }, is: image.ErrWrongFormat, message: "bad magic"},
		{name: "version 4", damage: func(t *testing.T, f image.File) { patch(t, f, 4, be32(4)) }, is: image.ErrUnsupported, message: "version 4"},
		{name: "cluster bits 8", damage: func(t *testing.T, f image.File) { patch(t, f, 20, be32(8)) }, is: blockdev.ErrCorrupt, message: "cluster_bits 8"},
		{name: "cluster bits 40", damage: func(t *testing.T, f image.File) { patch(t, f, 20, be32(40)) }, is: blockdev.ErrCorrupt, message: "cluster_bits 40"},
		{name: "virtual size absurd", damage: func(t *testing.T, f image.File) { patch(t, f, 24, be64(1<<63)) }, is: blockdev.ErrCorrupt, message: "size 9223372036854775808 (the virtual size) absurd"},
		{name: "huge l1_size", damage: func(t *testing.T, f image.File) { patch(t, f, 36, be32(0x7fffffff)) }, is: blockdev.ErrCorrupt, message: "l1_size 2147483647 is more than size 1048576 needs"},
		{name: "l1_size too small", damage: func(t *testing.T, f image.File) { patch(t, f, 24, be64(1<<40)) }, is: blockdev.ErrCorrupt, message: "l1_size 1 too small: size 1099511627776 needs 2048"},
		{name: "terabytes with an L1 larger than needed", damage: func(t *testing.T, f image.File) {
			patch(t, f, 24, be64(4<<40))
			patch(t, f, 36, be32(100000))
		}, is: blockdev.ErrCorrupt, message: "l1_size 100000 is more than size 4398046511104 needs (8192 L1 entries"},
		{name: "petabyte L1 table in a 1 MiB file", damage: func(t *testing.T, f image.File) {
			patch(t, f, 24, be64(1<<50))
			patch(t, f, 36, be32(1<<21))
		}, is: blockdev.ErrCorrupt, message: "L1 table (l1_table_offset, l1_size) at 0x30000+16777216 past the end of the file (1048576 bytes)"},
		{name: "L1 past EOF", damage: func(t *testing.T, f image.File) { patch(t, f, 40, be64(1<<30)) }, is: blockdev.ErrCorrupt, message: "l1_table_offset, l1_size) at 0x40000000+8 past the end of the file"},
		{name: "L1 unaligned", damage: func(t *testing.T, f image.File) { patch(t, f, 40, be64(0x30200)) }, is: blockdev.ErrCorrupt, message: "not cluster aligned"},
		{name: "L1 over header", damage: func(t *testing.T, f image.File) { patch(t, f, 40, be64(0)) }, is: blockdev.ErrCorrupt, message: "overlaps the header"},
		{name: "refcount table past EOF", damage: func(t *testing.T, f image.File) { patch(t, f, 48, be64(1<<40)) }, is: blockdev.ErrCorrupt, message: "refcount table (refcount_table_offset, refcount_table_clusters) at 0x10000000000"},
		{name: "huge refcount table", damage: func(t *testing.T, f image.File) { patch(t, f, 56, be32(1<<20)) }, is: blockdev.ErrCorrupt, message: "refcount_table_clusters 1048576 too large"},
		{name: "refcount table larger than the file needs", damage: func(t *testing.T, f image.File) { patch(t, f, 56, be32(8)) }, is: blockdev.ErrCorrupt, message: "refcount_table_clusters 8 is more than a file of 1048576 bytes needs (1)"},
		{name: "no refcount table", damage: func(t *testing.T, f image.File) { patch(t, f, 56, be32(0)) }, is: blockdev.ErrCorrupt, message: "refcount_table_clusters is 0"},
		{name: "refcount_order 7", damage: func(t *testing.T, f image.File) { patch(t, f, 96, be32(7)) }, is: blockdev.ErrCorrupt, message: "refcount_order 7"},
		{name: "unknown incompatible bit", damage: func(t *testing.T, f image.File) { patch(t, f, 72, be64(1<<10)) }, is: image.ErrUnsupported, message: "bit 10"},
		{name: "external data file", damage: func(t *testing.T, f image.File) { patch(t, f, 72, be64(incDataFile)) }, is: image.ErrUnsupported, message: "external data file"},
		{name: "encrypted", damage: func(t *testing.T, f image.File) { patch(t, f, 32, be32(2)) }, is: image.ErrUnsupported, message: "LUKS"},
		{name: "too many snapshots", damage: func(t *testing.T, f image.File) { patch(t, f, 60, be32(1<<30)) }, is: blockdev.ErrCorrupt, message: "nb_snapshots 1073741824"},
		{name: "snapshot table past EOF", damage: func(t *testing.T, f image.File) { patch(t, f, 60, append(be32(60000), be64(0x30000)...)) }, is: blockdev.ErrCorrupt, message: "snapshot table (snapshots_offset, nb_snapshots) at 0x30000+2400000 past the end of the file"},
		{name: "snapshot L1 past EOF", damage: func(t *testing.T, f image.File) { snapshotAt(t, f, 1<<40, 16, 0, 1) }, is: blockdev.ErrCorrupt, message: `snapshot "s" L1 table at 0x10000000000+128 past the end of the file`, via: info},
		{name: "snapshot L1 too large", damage: func(t *testing.T, f image.File) { snapshotAt(t, f, 0x50000, 1<<30, 0, 1) }, is: blockdev.ErrCorrupt, message: `snapshot "s" L1 table at 0x50000 (1073741824 entries) invalid`, via: info},
		{name: "snapshot extra data", damage: func(t *testing.T, f image.File) { snapshotAt(t, f, 0x50000, 1, 1<<30, 1) }, is: blockdev.ErrCorrupt, message: "1073741824 bytes of extra data", via: info},
		{name: "snapshots sharing an L1 table", damage: func(t *testing.T, f image.File) { snapshotAt(t, f, 0x50000, 8192, 0, 20) }, is: blockdev.ErrCorrupt, message: "snapshot L1 tables of more than 1114112 bytes in all in a file of 1048576 bytes", via: info},
		{name: "huge bitmap directory", damage: func(t *testing.T, f image.File) { bitmapsExt(t, f, 1, 1<<40) }, is: blockdev.ErrCorrupt, message: "bitmap_directory_size 1099511627776 invalid"},
		{name: "too many bitmaps", damage: func(t *testing.T, f image.File) { bitmapsExt(t, f, 1<<20, 1<<20) }, is: blockdev.ErrCorrupt, message: "nb_bitmaps 1048576"},
		{name: "bitmap directory past EOF", damage: func(t *testing.T, f image.File) { bitmapsExt(t, f, 1000, 1<<24) }, is: blockdev.ErrCorrupt, message: "bitmap directory (bitmap_directory_offset, bitmap_directory_size) at 0x40000+16777216 past the end"},
		{name: "header_length odd", damage: func(t *testing.T, f image.File) { patch(t, f, 100, be32(105)) }, is: blockdev.ErrCorrupt, message: "header_length"},
		{name: "backing name too long", damage: func(t *testing.T, f image.File) { patch(t, f, 8, be64(200)); patch(t, f, 16, be32(5000)) }, is: blockdev.ErrCorrupt, message: "backing file name"},
		{name: "truncated", damage: func(t *testing.T, f image.File) { f.Truncate(50) }, is: ErrNotQcow2, message: "shorter than a header"},
		{name: "L2 past EOF", damage: func(t *testing.T, f image.File) { patch(t, f, 3*65536, be64(1<<40|flagCopied)) }, is: blockdev.ErrCorrupt, message: "L2 table", via: read},
		{name: "data past EOF", damage: func(t *testing.T, f image.File) {
			patch(t, f, 3*65536, be64(4*65536|flagCopied))
			patch(t, f, 4*65536, be64(1<<40|flagCopied))
		}, is: blockdev.ErrCorrupt, message: "past the end of the file", via: read},
		{name: "compressed past EOF", damage: func(t *testing.T, f image.File) {
			patch(t, f, 3*65536, be64(4*65536|flagCopied))
			patch(t, f, 4*65536, be64(1<<40|flagCompressed))
		}, is: blockdev.ErrCorrupt, message: "compressed cluster", via: read},
		{name: "compressed garbage", damage: func(t *testing.T, f image.File) {
			patch(t, f, 3*65536, be64(4*65536|flagCopied))
			patch(t, f, 4*65536, be64(4*65536+512|flagCompressed))
			patch(t, f, 4*65536+512, []byte{0xff, 0xff, 0xff, 0xff})
		}, is: blockdev.ErrCorrupt, message: "compressed cluster", via: read},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := hostileFile(t)
			tc.damage(t, f)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, ierr := InfoFile(f)
			CheckFile(f, image.CheckOptions{})
			img, err := OpenFile(f, image.OpenOptions{ReadOnly: true, Names: image.NoNames{Why: "test"}})
			switch tc.via {
			case read:
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				defer img.Close()
				_, err = img.ReadAt(make([]byte, 512), 0)
			case info:
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				img.Close()
				err = ierr
			}
			runtime.ReadMemStats(&after)
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.message) {
				t.Fatalf("error %q: want %v naming %q", err, tc.is, tc.message)
			}
			if n := after.TotalAlloc - before.TotalAlloc; n > 64<<20 {
				t.Fatalf("allocated %d bytes for a 1 MiB file", n)
			}
		})
	}
}

// setBacking rewrites the backing file name of the image at p in place
// (there is room after the header extensions in the first cluster).
func setBacking(t *testing.T, p, name string) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, w := range []struct {
		off int64
		b   []byte
	}{{8, be64(1024)}, {16, be32(uint32(len(name)))}, {1024, []byte(name)}} {
		if _, err := f.WriteAt(w.b, w.off); err != nil {
			t.Fatal(err)
		}
	}
}

// TestHostileBacking refuses backing files that loop, escape the image's
// directory (and the --backing-dir), use json: or protocol names, make
// the chain too deep, or are raw without a recorded format.
func TestHostileBacking(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.qcow2"), filepath.Join(dir, "b.qcow2")
	create(t, a, 1<<20, 0, nil, "", "")
	create(t, b, 1<<20, 0, nil, "a.qcow2", "qcow2")
	setBacking(t, a, "b.qcow2") // a → b → a
	outside := t.TempDir()
	create(t, filepath.Join(outside, "secret.qcow2"), 1<<20, 0, nil, "", "")
	esc := filepath.Join(dir, "escape.qcow2")
	create(t, esc, 1<<20, 0, nil, "", "")
	setBacking(t, esc, "../"+filepath.Base(outside)+"/secret.qcow2")
	js := filepath.Join(dir, "json.qcow2")
	create(t, js, 1<<20, 0, nil, "", "")
	setBacking(t, js, `json:{"file.driver":"file","file.filename":"/etc/passwd"}`)
	nbd := filepath.Join(dir, "nbd.qcow2")
	create(t, nbd, 1<<20, 0, nil, "", "")
	setBacking(t, nbd, "nbd://example.invalid/x")
	noFmt := filepath.Join(dir, "nofmt.qcow2")
	create(t, noFmt, 1<<20, 0, map[string]string{"compat": "0.10"}, "", "")
	setBacking(t, noFmt, "c0.qcow2") // v2 image: no backing-format extension
	writeFile(t, dir, "base.raw", make([]byte, 1<<20))
	noFmtRaw := filepath.Join(dir, "nofmtraw.qcow2")
	create(t, noFmtRaw, 1<<20, 0, map[string]string{"compat": "0.10"}, "", "")
	setBacking(t, noFmtRaw, "base.raw")
	c0 := filepath.Join(dir, "c0.qcow2")
	create(t, c0, 1<<20, 0, nil, "", "")
	for i := 1; i <= 3; i++ {
		create(t, filepath.Join(dir, "c"+string(rune('0'+i))+".qcow2"), 1<<20, 0, nil, "c"+string(rune('0'+i-1))+".qcow2", "qcow2")
	}
	tests := []struct {
		name, path string
		opt        image.OpenOptions
		is         error
		message    string
	}{
		{"loop", b, image.OpenOptions{}, image.ErrBackingRefused, "loops back"},
		{"escape", esc, image.OpenOptions{}, image.ErrBackingRefused, "outside"},
		{"escape the backing dir", esc, image.OpenOptions{BackingDir: dir}, image.ErrBackingRefused, image.BackingDirFlag},
		{"json", js, image.OpenOptions{}, image.ErrBackingRefused, "json:"},
		{"protocol", nbd, image.OpenOptions{}, image.ErrBackingRefused, "protocol"},
		{"too deep", filepath.Join(dir, "c3.qcow2"), image.OpenOptions{MaxChainDepth: 2}, image.ErrChainTooDeep, "more than 2"},
		{"unrecorded raw", noFmtRaw, image.OpenOptions{}, image.ErrBackingRefused, "does not guess raw"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.opt.ReadOnly = true
			img, err := openPath(tc.path, tc.opt)
			if err == nil {
				img.Close()
				t.Fatal("no error")
			}
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.message) {
				t.Fatalf("error %q: want %v naming %q", err, tc.is, tc.message)
			}
		})
	}
	t.Run("unrecorded structured format probed", func(t *testing.T) {
		img := openImage(t, noFmt, image.OpenOptions{ReadOnly: true})
		if img.Backing() == nil {
			t.Fatal("no backing device")
		}
	})
	t.Run("within depth", func(t *testing.T) {
		img := openImage(t, filepath.Join(dir, "c3.qcow2"), image.OpenOptions{ReadOnly: true, MaxChainDepth: 3})
		if img.Backing() == nil {
			t.Fatal("no backing device")
		}
	})
	t.Run("escape allowed by a backing dir", func(t *testing.T) {
		img := openImage(t, esc, image.OpenOptions{ReadOnly: true, BackingDir: outside})
		if img.Backing() == nil {
			t.Fatal("no backing device")
		}
	})
}

// TestCreateBacking creates images over a backing file: its size and,
// without -F, its format are read through the Names; the name is recorded
// as given; a raw backing file needs -F.
func TestCreateBacking(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "base.raw", make([]byte, 3<<20))
	create(t, filepath.Join(dir, "base.qcow2"), 2<<20, 0, nil, "", "")
	outside := t.TempDir()
	create(t, filepath.Join(outside, "secret.qcow2"), 1<<20, 0, nil, "", "")
	tests := []struct {
		name, backing, format string
		size                  int64
		wantFormat            string
		is                    error
		message               string
	}{
		{name: "raw without -F", backing: "base.raw", is: image.ErrBackingRefused, message: "-F"},
		{name: "raw with -F", backing: "base.raw", format: "raw", size: 3 << 20, wantFormat: "raw"},
		{name: "qcow2 probed", backing: "base.qcow2", size: 2 << 20, wantFormat: "qcow2"},
		{name: "outside", backing: "../" + filepath.Base(outside) + "/secret.qcow2", is: image.ErrBackingRefused, message: "outside"},
		{name: "missing", backing: "none.qcow2", message: "does not exist"},
		{name: "json", backing: "json:{}", is: image.ErrBackingRefused, message: "json:"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_")+".qcow2")
			err := createPath(p, image.CreateOptions{BackingFile: tc.backing, BackingFormat: tc.format})
			if tc.message != "" {
				if err == nil || tc.is != nil && !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.message) {
					t.Fatalf("error %v: want %v naming %q", err, tc.is, tc.message)
				}
				if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("a failed create left %s: %v", p, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			fa, err := infoPath(p)
			if err != nil {
				t.Fatal(err)
			}
			if fa.VirtualSize != tc.size || fa.BackingFile != tc.backing || fa.BackingFormat != tc.wantFormat {
				t.Fatalf("facts: size %d, backing %q (%s); want %d, %q (%s)", fa.VirtualSize, fa.BackingFile, fa.BackingFormat, tc.size, tc.backing, tc.wantFormat)
			}
			img := openImage(t, p, image.OpenOptions{ReadOnly: true})
			if img.Backing() == nil || img.Backing().Size() != tc.size {
				t.Fatal("backing file not opened")
			}
		})
	}
}

// TestMemoryChain builds and opens a backing chain wholly in memory: the
// files an image names come from its Names.
func TestMemoryChain(t *testing.T) {
	base := imagetest.NewMemFile("base.qcow2", nil)
	if err := CreateFile(base, image.CreateOptions{Format: "qcow2", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	bi, err := OpenFile(base.Reopen(), image.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	data := pattern(1<<20, 9)
	if _, err := bi.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := bi.Close(); err != nil {
		t.Fatal(err)
	}
	names := imagetest.NewMemNames(base)
	top := imagetest.NewMemFile("top.qcow2", nil)
	if err := CreateFile(top, image.CreateOptions{Format: "qcow2", BackingFile: "base.qcow2", Names: names}); err != nil {
		t.Fatal(err)
	}
	img, err := OpenFile(top, image.OpenOptions{Names: names})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.WriteAt([]byte("top"), 4096); err != nil {
		t.Fatal(err)
	}
	copy(data[4096:], "top")
	imagetest.MustEqual(t, "chain", imagetest.ReadAll(t, img), data)
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	if !top.Closed() {
		t.Fatal("Close left the image's file open")
	}
	if _, err := OpenFile(top.Reopen(), image.OpenOptions{Names: image.NoNames{Why: "no names here"}}); !errors.Is(err, image.ErrBackingRefused) || !strings.Contains(err.Error(), "no names here") {
		t.Fatalf("open without names: %v", err)
	}
}

// countingFile counts the bytes read from a File.
type countingFile struct {
	image.File
	read atomic.Int64
}

func (c *countingFile) ReadAt(p []byte, off int64) (int, error) {
	c.read.Add(int64(len(p)))
	return c.File.ReadAt(p, off)
}

// TestCheckSharedTables checks an image whose 4096 L1 entries all name one
// L2 table, whose entries all name one data cluster: the references are
// counted (and the damage reported) reading each table once, not once per
// reference.
func TestCheckSharedTables(t *testing.T) {
	f := hostileFile(t)
	patch(t, f, 24, be64(4096<<29))
	patch(t, f, 36, be32(4096))
	var l1, l2 []byte
	for range 4096 {
		l1 = append(l1, be64(0x40000|flagCopied)...)
	}
	for range 8192 {
		l2 = append(l2, be64(0x50000|flagCopied)...)
	}
	patch(t, f, 0x30000, l1)
	patch(t, f, 0x40000, l2)
	cf := &countingFile{File: f}
	res, err := CheckFile(cf, image.CheckOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Corruptions == 0 {
		t.Fatalf("no corruption found: %v", res.Messages)
	}
	if n := cf.read.Load(); n > 8<<20 {
		t.Fatalf("read %d bytes of a 1 MiB file", n)
	}
}
