package qcow2

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// patch writes v (big-endian, len(v)*8 bits) at off in the file at p.
func patch(t *testing.T, p string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func be64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// TestHostileImages opens damaged and malicious images: each must be
// refused (or its bad metadata reported on read) with an error naming the
// problem, never a panic, hang or large allocation.
func TestHostileImages(t *testing.T) {
	tests := []struct {
		name    string
		damage  func(t *testing.T, p string)
		is      error
		message string
		onRead  bool // the open succeeds; reading the first cluster fails
	}{
		{name: "bad magic", damage: func(t *testing.T, p string) { patch(t, p, 0, []byte("QFI\x00")) }, is: ErrNotQcow2, message: "bad magic"},
		{name: "version 4", damage: func(t *testing.T, p string) { patch(t, p, 4, be32(4)) }, is: image.ErrUnsupported, message: "version 4"},
		{name: "cluster bits 8", damage: func(t *testing.T, p string) { patch(t, p, 20, be32(8)) }, is: blockdev.ErrCorrupt, message: "cluster_bits 8"},
		{name: "cluster bits 40", damage: func(t *testing.T, p string) { patch(t, p, 20, be32(40)) }, is: blockdev.ErrCorrupt, message: "cluster_bits 40"},
		{name: "huge l1_size", damage: func(t *testing.T, p string) { patch(t, p, 36, be32(0x7fffffff)) }, is: blockdev.ErrCorrupt, message: "L1 table"},
		{name: "l1_size too small", damage: func(t *testing.T, p string) { patch(t, p, 24, be64(1<<40)) }, is: blockdev.ErrCorrupt, message: "too small"},
		{name: "L1 past EOF", damage: func(t *testing.T, p string) { patch(t, p, 40, be64(1<<30)) }, is: blockdev.ErrCorrupt, message: "past the end of the file"},
		{name: "L1 unaligned", damage: func(t *testing.T, p string) { patch(t, p, 40, be64(0x30200)) }, is: blockdev.ErrCorrupt, message: "not cluster aligned"},
		{name: "L1 over header", damage: func(t *testing.T, p string) { patch(t, p, 40, be64(0)) }, is: blockdev.ErrCorrupt, message: "overlaps the header"},
		{name: "refcount table past EOF", damage: func(t *testing.T, p string) { patch(t, p, 48, be64(1<<40)) }, is: blockdev.ErrCorrupt, message: "refcount table"},
		{name: "huge refcount table", damage: func(t *testing.T, p string) { patch(t, p, 56, be32(1<<20)) }, is: blockdev.ErrCorrupt, message: "too large"},
		{name: "refcount_order 7", damage: func(t *testing.T, p string) { patch(t, p, 96, be32(7)) }, is: blockdev.ErrCorrupt, message: "refcount_order 7"},
		{name: "unknown incompatible bit", damage: func(t *testing.T, p string) { patch(t, p, 72, be64(1<<10)) }, is: image.ErrUnsupported, message: "bit 10"},
		{name: "external data file", damage: func(t *testing.T, p string) { patch(t, p, 72, be64(incDataFile)) }, is: image.ErrUnsupported, message: "external data file"},
		{name: "encrypted", damage: func(t *testing.T, p string) { patch(t, p, 32, be32(2)) }, is: image.ErrUnsupported, message: "LUKS"},
		{name: "too many snapshots", damage: func(t *testing.T, p string) { patch(t, p, 60, be32(1<<30)) }, is: blockdev.ErrCorrupt, message: "snapshots"},
		{name: "header_length odd", damage: func(t *testing.T, p string) { patch(t, p, 100, be32(105)) }, is: blockdev.ErrCorrupt, message: "header_length"},
		{name: "backing name too long", damage: func(t *testing.T, p string) { patch(t, p, 8, be64(200)); patch(t, p, 16, be32(5000)) }, is: blockdev.ErrCorrupt, message: "backing file name"},
		{name: "truncated", damage: func(t *testing.T, p string) { os.Truncate(p, 50) }, is: ErrNotQcow2, message: "shorter than a header"},
		{name: "L2 past EOF", damage: func(t *testing.T, p string) { patch(t, p, 3*65536, be64(1<<40|flagCopied)) }, is: blockdev.ErrCorrupt, message: "L2 table", onRead: true},
		{name: "data past EOF", damage: func(t *testing.T, p string) {
			patch(t, p, 3*65536, be64(4*65536|flagCopied))
			patch(t, p, 4*65536, be64(1<<40|flagCopied))
		}, is: blockdev.ErrCorrupt, message: "past the end of the file", onRead: true},
		{name: "compressed past EOF", damage: func(t *testing.T, p string) {
			patch(t, p, 3*65536, be64(4*65536|flagCopied))
			patch(t, p, 4*65536, be64(1<<40|flagCompressed))
		}, is: blockdev.ErrCorrupt, message: "compressed cluster", onRead: true},
		{name: "compressed garbage", damage: func(t *testing.T, p string) {
			patch(t, p, 3*65536, be64(4*65536|flagCopied))
			patch(t, p, 4*65536, be64(4*65536+512|flagCompressed))
			patch(t, p, 4*65536+512, []byte{0xff, 0xff, 0xff, 0xff})
		}, is: blockdev.ErrCorrupt, message: "compressed cluster", onRead: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "img.qcow2")
			create(t, p, 1<<20, 0, nil, "", "")
			if tc.onRead {
				// Give the image a second cluster for an L2 table.
				f, _ := os.OpenFile(p, os.O_RDWR, 0)
				f.Truncate(5 * 65536)
				f.Close()
			}
			tc.damage(t, p)
			img, err := Open(p, image.OpenOptions{ReadOnly: true})
			if tc.onRead {
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				defer img.Close()
				_, err = img.ReadAt(make([]byte, 512), 0)
			}
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.message) {
				t.Fatalf("error %q: want %v naming %q", err, tc.is, tc.message)
			}
		})
	}
}

// TestHostileBacking refuses backing files that loop, escape the backing
// directory, use json: or protocol names, or make the chain too deep.
func TestHostileBacking(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.qcow2"), filepath.Join(dir, "b.qcow2")
	create(t, a, 1<<20, 0, nil, "", "")
	create(t, b, 1<<20, 0, nil, "a.qcow2", "qcow2")
	setBacking := func(p, name string) {
		// Rewrite the backing name in place (there is room after the header
		// extensions in the first cluster).
		patch(t, p, 8, be64(1024))
		patch(t, p, 16, be32(uint32(len(name))))
		patch(t, p, 1024, []byte(name))
	}
	setBacking(a, "b.qcow2") // a → b → a
	outside := t.TempDir()
	create(t, filepath.Join(outside, "secret.qcow2"), 1<<20, 0, nil, "", "")
	esc := filepath.Join(dir, "escape.qcow2")
	create(t, esc, 1<<20, 0, nil, "", "")
	setBacking(esc, "../"+filepath.Base(outside)+"/secret.qcow2")
	js := filepath.Join(dir, "json.qcow2")
	create(t, js, 1<<20, 0, nil, "", "")
	setBacking(js, `json:{"file.driver":"file","file.filename":"/etc/passwd"}`)
	nbd := filepath.Join(dir, "nbd.qcow2")
	create(t, nbd, 1<<20, 0, nil, "", "")
	setBacking(nbd, "nbd://example.invalid/x")
	noFmt := filepath.Join(dir, "nofmt.qcow2")
	create(t, noFmt, 1<<20, 0, map[string]string{"compat": "0.10"}, "", "")
	setBacking(noFmt, "c0.qcow2") // v2 image: no backing-format extension
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
		{"escape", esc, image.OpenOptions{BackingDir: dir}, image.ErrBackingRefused, "outside"},
		{"json", js, image.OpenOptions{}, image.ErrBackingRefused, "json:"},
		{"protocol", nbd, image.OpenOptions{}, image.ErrBackingRefused, "protocol"},
		{"too deep", filepath.Join(dir, "c3.qcow2"), image.OpenOptions{MaxChainDepth: 2}, image.ErrChainTooDeep, "more than 2"},
		{"unrecorded format in safe mode", noFmt, image.OpenOptions{BackingDir: dir}, image.ErrBackingRefused, "no recorded format"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.opt.ReadOnly = true
			img, err := Open(tc.path, tc.opt)
			if err == nil {
				img.Close()
				t.Fatal("no error")
			}
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.message) {
				t.Fatalf("error %q: want %v naming %q", err, tc.is, tc.message)
			}
		})
	}
	t.Run("unrecorded format probed outside safe mode", func(t *testing.T) {
		img := openImage(t, noFmt, image.OpenOptions{ReadOnly: true})
		if img.Backing() == nil {
			t.Fatal("no backing device")
		}
	})
	t.Run("within depth", func(t *testing.T) {
		img := openImage(t, filepath.Join(dir, "c3.qcow2"), image.OpenOptions{ReadOnly: true, MaxChainDepth: 3, BackingDir: dir})
		if img.Backing() == nil {
			t.Fatal("no backing device")
		}
	})
}
