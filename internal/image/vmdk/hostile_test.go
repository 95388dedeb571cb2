package vmdk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
	"vdisk/internal/image/imagetest"
)

// smallImage returns the bytes of a 1 MiB monolithicSparse VMDK with 4 KiB
// grains and two written grains.
func smallImage(t testing.TB) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "small.vmdk")
	if err := createPath(p, image.CreateOptions{Format: Name, Size: 1 << 20, ClusterSize: 4096}); err != nil {
		t.Fatal(err)
	}
	d, err := openPath(p, image.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{900 << 10, 100} {
		if _, err := d.WriteAt([]byte("vdisk vmdk test data"), off); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestHostileSparse opens damaged monolithicSparse files in memory: each
// is refused (at open, or at the read that meets the damage) with an error
// naming the problem, without allocating what the damage claims.
func TestHostileSparse(t *testing.T) {
	le := binary.LittleEndian
	orig := smallImage(t)
	gd := int64(le.Uint64(orig[56:])) * sectorSize
	gt := int64(le.Uint32(orig[gd:])) * sectorSize
	tests := []struct {
		name   string
		mutate func(b []byte) []byte
		want   string
		atRead bool // open succeeds; reading the damaged grain fails
		kind   error
	}{
		{name: "version", mutate: func(b []byte) []byte { le.PutUint32(b[4:], 9); return b }, want: "version 9", kind: image.ErrUnsupported},
		{name: "newlines", mutate: func(b []byte) []byte { b[75] = '\n'; return b }, want: "newline", kind: blockdev.ErrCorrupt},
		{name: "grain", mutate: func(b []byte) []byte { le.PutUint64(b[20:], 3); return b }, want: "grain of 3 sectors", kind: blockdev.ErrCorrupt},
		{name: "huge-grain", mutate: func(b []byte) []byte { le.PutUint64(b[20:], 1<<40); return b }, want: "grain of", kind: blockdev.ErrCorrupt},
		{name: "gtes", mutate: func(b []byte) []byte { le.PutUint32(b[44:], 100000); return b }, want: "entries per grain table", kind: blockdev.ErrCorrupt},
		{name: "capacity", mutate: func(b []byte) []byte { le.PutUint64(b[12:], 1<<62); return b }, want: "64 TiB", kind: blockdev.ErrCorrupt},
		{name: "gd-outside", mutate: func(b []byte) []byte { le.PutUint64(b[56:], 1<<30); return b }, want: "grain directory", kind: blockdev.ErrCorrupt},
		{name: "gd-entry", mutate: func(b []byte) []byte { le.PutUint32(b[gd:], 0x7fffffff); return b }, want: "points past the end", kind: blockdev.ErrCorrupt},
		{name: "gt-entry-past-eof", mutate: func(b []byte) []byte { le.PutUint32(b[gt:], 0x7ffffff0); return b }, want: "outside the data area", atRead: true, kind: blockdev.ErrCorrupt},
		{name: "gt-entry-into-metadata", mutate: func(b []byte) []byte { le.PutUint32(b[gt:], 2); return b }, want: "outside the data area", atRead: true, kind: blockdev.ErrCorrupt},
		{name: "descriptor-garbage", mutate: func(b []byte) []byte {
			copy(b[sectorSize:], "# Disk DescriptorFile\nthis is not a descriptor\n")
			return b
		}, want: "not key=value", kind: blockdev.ErrCorrupt},
		{name: "descriptor-outside", mutate: func(b []byte) []byte { le.PutUint64(b[28:], 1<<40); return b }, want: "embedded descriptor", kind: blockdev.ErrCorrupt},
		{name: "truncated", mutate: func(b []byte) []byte { return b[:len(b)-2048] }, want: "outside the data area", atRead: true, kind: blockdev.ErrCorrupt},
		{name: "not-vmdk", mutate: func(b []byte) []byte { return []byte(strings.Repeat("z", 4096)) }, want: "not a VMDK", kind: image.ErrWrongFormat},
		// A file of 1 MiB whose header and descriptor claim 64 TiB: its
		// grain directory would take 128 MiB.
		{name: "terabytes-in-1MiB", mutate: func(b []byte) []byte {
			le.PutUint64(b[12:], maxSectors)
			desc := b[sectorSize : sectorSize+embeddedDescSectors*sectorSize]
			copy(desc, bytes.Replace(bytes.Clone(desc), []byte("RW 2048 SPARSE"), []byte("RW 137438953472 SPARSE"), 1))
			return append(b, make([]byte, 1<<20-len(b))...)
		}, want: "grain directory of 33554432 entries (a capacity of 137438953472 sectors in grains of 8 sectors, 512 per table) at sector", kind: blockdev.ErrCorrupt},
		{name: "gd-overlap", mutate: func(b []byte) []byte {
			le.PutUint64(b[12:], 8192)
			copy(b[gd+4:gd+8], b[gd:gd+4])
			return b
		}, want: "overlapping grain tables", kind: blockdev.ErrCorrupt},
		{name: "compressed-huge-grain", mutate: func(b []byte) []byte {
			le.PutUint32(b[8:], le.Uint32(b[8:])|flagCompressed)
			le.PutUint16(b[77:], compressDeflate)
			le.PutUint64(b[20:], 1<<18)
			return b
		}, want: "compressed grains of 262144 sectors", kind: image.ErrUnsupported},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.mutate(bytes.Clone(orig))
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			d, err := image.OpenFile(imagetest.NewMemFile("bad.vmdk", bytes.Clone(b)), image.OpenOptions{Format: Name, ReadOnly: true, Names: image.NoNames{Why: "test"}})
			if tc.atRead {
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				_, err = d.ReadAt(make([]byte, 1<<20), 0)
				d.Close()
			} else if err == nil {
				d.Close()
				t.Fatal("opened")
			}
			runtime.ReadMemStats(&after)
			if !errors.Is(err, tc.kind) {
				t.Errorf("error does not wrap %v: %v", tc.kind, err)
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v does not mention %q", err, tc.want)
			}
			if n := after.TotalAlloc - before.TotalAlloc; n > 64<<20 {
				t.Errorf("open allocated %d bytes", n)
			}
			if r, err := image.CheckOf(imagetest.NewMemFile("bad.vmdk", b), Name, image.CheckOptions{}); err == nil && r.Clean() {
				t.Errorf("Check found it clean")
			}
		})
	}
}

// TestHostileDescriptor refuses descriptors whose extents leave the
// descriptor's directory, are truncated, or are malformed.
func TestHostileDescriptor(t *testing.T) {
	outer := t.TempDir()
	secret := filepath.Join(outer, "secret.raw")
	if err := os.WriteFile(secret, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(outer, "img")
	os.Mkdir(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "small-flat.vmdk"), make([]byte, 1<<20), 0o644)
	os.Symlink(secret, filepath.Join(dir, "link.vmdk"))
	desc := func(extents string) string {
		return "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n" + extents
	}
	tests := []struct {
		name, text, want string
		kind             error
	}{
		{"dotdot", desc(`RW 2048 FLAT "../secret.raw" 0`), "outside", image.ErrBackingRefused},
		{"absolute", desc(`RW 2048 FLAT "` + secret + `" 0`), "outside", image.ErrBackingRefused},
		{"symlink", desc(`RW 2048 FLAT "link.vmdk" 0`), "outside", image.ErrBackingRefused},
		{"flat-truncated", desc(`RW 4096 FLAT "small-flat.vmdk" 0`), "truncated", blockdev.ErrCorrupt},
		{"flat-offset", desc(`RW 2048 FLAT "small-flat.vmdk" 1`), "truncated", blockdev.ErrCorrupt},
		{"bad-size", desc(`RW -5 FLAT "small-flat.vmdk" 0`), "extent size", blockdev.ErrCorrupt},
		{"huge-size", desc(`RW 99999999999999999 FLAT "small-flat.vmdk" 0`), "extent size", blockdev.ErrCorrupt},
		{"sum-too-large", desc(strings.Repeat("RW 137438953472 ZERO\n", 3)), "more than 64 TiB", blockdev.ErrCorrupt},
		{"unquoted", desc(`RW 2048 FLAT "small-flat.vmdk`), "closing quote", blockdev.ErrCorrupt},
		{"vmfssparse", desc(`RW 2048 VMFSSPARSE "small-flat.vmdk"`), "VMFSSPARSE", image.ErrUnsupported},
		{"noaccess", desc(`NOACCESS 2048 FLAT "small-flat.vmdk" 0`), "NOACCESS", image.ErrUnsupported},
		{"no-extents", desc(""), "no extents", blockdev.ErrCorrupt},
		{"huge-descriptor", desc(`RW 2048 FLAT "small-flat.vmdk" 0` + "\n" + strings.Repeat("#", 1<<20)), "larger than", blockdev.ErrCorrupt},
		{"same-file-twice", desc("RW 1024 FLAT \"small-flat.vmdk\" 0\nRW 1024 FLAT \"small-flat.vmdk\" 1024\n"), "named twice", blockdev.ErrCorrupt},
		{"parent-self", desc(`RW 2048 FLAT "small-flat.vmdk" 0` + "\nparentCID=1\nparentFileNameHint=\"bad.vmdk\"\n"), "loops back", image.ErrBackingRefused},
		{"parent-protocol", desc(`RW 2048 FLAT "small-flat.vmdk" 0` + "\nparentCID=1\nparentFileNameHint=\"nbd://host/x\"\n"), "protocol", image.ErrBackingRefused},
		{"parent-no-hint", desc(`RW 2048 FLAT "small-flat.vmdk" 0` + "\nparentCID=1\n"), "without a parentFileNameHint", blockdev.ErrCorrupt},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, "bad.vmdk")
			os.Remove(p)
			if err := os.WriteFile(p, []byte(tc.text), 0o644); err != nil {
				t.Fatal(err)
			}
			d, err := openPath(p, image.OpenOptions{ReadOnly: true})
			if err == nil {
				d.Close()
				t.Fatal("opened")
			}
			if !errors.Is(err, tc.kind) {
				t.Errorf("error does not wrap %v: %v", tc.kind, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
	t.Run("parent-outside-backing-dir", func(t *testing.T) {
		base := filepath.Join(outer, "base.vmdk")
		if err := createPath(base, image.CreateOptions{Format: Name, Size: 1 << 20}); err != nil {
			t.Fatal(err)
		}
		child := filepath.Join(dir, "child.vmdk")
		if err := createPath(child, image.CreateOptions{Format: Name, BackingFile: "../base.vmdk", Names: image.LocalNames{Dirs: []string{outer}}}); err != nil {
			t.Fatal(err)
		}
		if _, err := openPath(child, image.OpenOptions{ReadOnly: true, BackingDir: dir}); !errors.Is(err, image.ErrBackingRefused) {
			t.Fatalf("open: %v", err)
		}
		d, err := openPath(child, image.OpenOptions{ReadOnly: true, BackingDir: outer})
		if err != nil {
			t.Fatal(err)
		}
		d.Close()
	})
}
