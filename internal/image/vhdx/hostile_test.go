package vhdx

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
)

// Layout of the template image (Create's): log at 1 MiB, BAT at 2 MiB,
// metadata at 3 MiB, data from 4 MiB.
const (
	tmplBAT  = 2 * mib
	tmplMeta = 3 * mib
)

// template returns a 9 MiB dynamic VHDX with 1 MiB blocks and blocks 0
// and 4 written.
func template(t testing.TB) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "t.vhdx")
	if err := createPath(p, image.CreateOptions{Format: Name, Size: 9 << 20, ClusterSize: mib}); err != nil {
		t.Fatal(err)
	}
	d, err := openPath(p, image.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{100, 4<<20 + 100} {
		if _, err := d.WriteAt([]byte("vdisk vhdx test"), off); err != nil {
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

// fixHeaders recomputes both headers' checksums.
func fixHeaders(b []byte) {
	for _, off := range []int{header1Off, header2Off} {
		h := b[off : off+headerSize]
		binary.LittleEndian.PutUint32(h[4:], checksum(h, 4))
	}
}

// fixRegions recomputes both region tables' checksums.
func fixRegions(b []byte) {
	for _, off := range []int{region1Off, region2Off} {
		r := b[off : off+regionSize]
		binary.LittleEndian.PutUint32(r[4:], checksum(r, 4))
	}
}

// TestHostile opens damaged and malicious images: each is refused with an
// error naming the problem.
func TestHostile(t *testing.T) {
	le := binary.LittleEndian
	item := func(i int) int { return tmplMeta + metaTabSize + []int{0, 8, 16, 32, 36}[i] } // Create's item offsets
	tests := []struct {
		name   string
		mutate func(b []byte) []byte
		want   string
		kind   error
	}{
		{"signature", func(b []byte) []byte { copy(b, "vhdxFILE"); return b }, "not a VHDX", image.ErrWrongFormat},
		{"short", func(b []byte) []byte { return b[:2*mib] }, "too short", blockdev.ErrCorrupt},
		{"headers-crc", func(b []byte) []byte { b[header1Off+20]++; b[header2Off+20]++; return b }, "neither header", blockdev.ErrCorrupt},
		{"headers-same-seq", func(b []byte) []byte {
			copy(b[header2Off+8:header2Off+16], b[header1Off+8:header1Off+16])
			fixHeaders(b)
			return b
		}, "both headers have sequence number", blockdev.ErrCorrupt},
		{"log-outside", func(b []byte) []byte {
			le.PutUint64(b[header1Off+72:], 1<<40)
			le.PutUint64(b[header2Off+72:], 1<<40)
			fixHeaders(b)
			return b
		}, "neither header", blockdev.ErrCorrupt},
		{"regions-crc", func(b []byte) []byte { b[region1Off+40]++; b[region2Off+40]++; return b }, "region table", blockdev.ErrCorrupt},
		{"region-outside", func(b []byte) []byte {
			le.PutUint64(b[region1Off+16+16:], 1<<45)
			copy(b[region2Off:region2Off+regionSize], b[region1Off:region1Off+regionSize])
			fixRegions(b)
			return b
		}, "not inside the file", blockdev.ErrCorrupt},
		{"region-unaligned", func(b []byte) []byte {
			le.PutUint64(b[region1Off+16+16:], tmplBAT+4096)
			copy(b[region2Off:region2Off+regionSize], b[region1Off:region1Off+regionSize])
			fixRegions(b)
			return b
		}, "whole MiB", blockdev.ErrCorrupt},
		{"region-required-unknown", func(b []byte) []byte {
			le.PutUint32(b[region1Off+8:], 3)
			e := b[region1Off+16+64:]
			copy(e, "unknown region!!")
			le.PutUint64(e[16:], 5*mib)
			le.PutUint32(e[24:], mib)
			le.PutUint32(e[28:], 1)
			copy(b[region2Off:region2Off+regionSize], b[region1Off:region1Off+regionSize])
			fixRegions(b)
			return b
		}, "required region", image.ErrUnsupported},
		{"metadata-signature", func(b []byte) []byte { b[tmplMeta]++; return b }, "metadata table", blockdev.ErrCorrupt},
		{"metadata-count", func(b []byte) []byte { le.PutUint16(b[tmplMeta+10:], 9000); return b }, "entries", blockdev.ErrCorrupt},
		{"metadata-item-outside", func(b []byte) []byte { le.PutUint32(b[tmplMeta+32+16:], 1<<30); return b }, "outside the metadata region", blockdev.ErrCorrupt},
		{"block-size", func(b []byte) []byte { le.PutUint32(b[item(0):], 3*mib); return b }, "block size", blockdev.ErrCorrupt},
		{"virtual-size", func(b []byte) []byte { le.PutUint64(b[item(1):], 1<<60); return b }, "virtual size", blockdev.ErrCorrupt},
		{"sector-size", func(b []byte) []byte { le.PutUint32(b[item(3):], 1000); return b }, "logical sector size", blockdev.ErrCorrupt},
		{"parent-without-locator", func(b []byte) []byte { le.PutUint32(b[item(0)+4:], 2); return b }, "without a parent locator", blockdev.ErrCorrupt},
		{"bat-past-eof", func(b []byte) []byte { le.PutUint64(b[tmplBAT:], 4000<<batOffsetShift|stateFullPresent); return b }, "past the end of the file", blockdev.ErrCorrupt},
		{"bat-on-metadata", func(b []byte) []byte { le.PutUint64(b[tmplBAT:], 3<<batOffsetShift|stateFullPresent); return b }, "overlap", blockdev.ErrCorrupt},
		{"bat-shared", func(b []byte) []byte { copy(b[tmplBAT+8:tmplBAT+16], b[tmplBAT:tmplBAT+8]); return b }, "share the block", blockdev.ErrCorrupt},
		{"bat-state", func(b []byte) []byte { le.PutUint64(b[tmplBAT+8:], 4); return b }, "state 4", blockdev.ErrCorrupt},
		{"bat-partial", func(b []byte) []byte { b[tmplBAT] |= 7; return b }, "partially present", blockdev.ErrCorrupt},
		{"truncated", func(b []byte) []byte { return b[:len(b)-mib] }, "truncated", blockdev.ErrCorrupt},
		{"metadata-twice", func(b []byte) []byte {
			copy(b[tmplMeta+32+32*1:tmplMeta+32+32*2], b[tmplMeta+32:tmplMeta+64])
			return b
		}, "listed twice", blockdev.ErrCorrupt},
		// A file of 1 MiB that claims 64 TiB, and a small image whose
		// metadata claims 64 TiB of 1 MiB blocks: a BAT of 512 MiB.
		{"terabytes-in-1MiB", func(b []byte) []byte {
			le.PutUint64(b[item(1):], 64<<40)
			return b[:mib]
		}, "too short", blockdev.ErrCorrupt},
		{"terabytes-small-bat", func(b []byte) []byte { le.PutUint64(b[item(1):], 64<<40); return b }, "too small for the 67125247 entries", blockdev.ErrCorrupt},
		{"log-too-large", func(b []byte) []byte {
			b = append(b, make([]byte, 40*mib-len(b))...)
			for _, h := range []int{header1Off, header2Off} {
				le.PutUint32(b[h+68:], 17*mib)
				copy(b[h+48:h+64], "dirty log guid!!")
			}
			fixHeaders(b)
			return b
		}, "log of 17825792 bytes is larger than", image.ErrUnsupported},
		// A 16 MiB log of one entry of half a million descriptors, each
		// zeroing the same 4 KiB: 2 GiB of zeroes.
		{"log-zeroes-too-much", func(b []byte) []byte {
			b = append(b, make([]byte, 24*mib-len(b))...)
			g := mustGUID("aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee")
			descs := make([]testDesc, (16*mib-logHdrSize)/logDescSize)
			for i := range descs {
				descs[i] = testDesc{off: 4 * mib, zeroLen: logSector}
			}
			copy(b[8*mib:], encodeLogEntry(1, 0, g, 24*mib, 24*mib, descs))
			for _, h := range []int{header1Off, header2Off} {
				le.PutUint64(b[h+72:], 8*mib)
				le.PutUint32(b[h+68:], 16*mib)
				copy(b[h+48:h+64], g[:])
			}
			fixHeaders(b)
			return b
		}, "zero more than", blockdev.ErrCorrupt},
	}
	orig := template(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.mutate(bytes.Clone(orig))
			m := newMemFile(bytes.Clone(b))
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			d, err := image.OpenFile(m, image.OpenOptions{Format: Name, Names: image.NoNames{Why: "test"}})
			runtime.ReadMemStats(&after)
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
			if n := after.TotalAlloc - before.TotalAlloc; n > 64<<20 {
				t.Errorf("open allocated %d bytes", n)
			}
			if r, err := image.CheckOf(newMemFile(b), Name, image.CheckOptions{}); err == nil && r.Clean() {
				t.Error("Check found it clean")
			}
		})
	}
}

// TestHostileLog refuses dirty logs that would write outside the image's
// data: over the headers, or into a file the log says was larger.
func TestHostileLog(t *testing.T) {
	g := mustGUID("aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee")
	orig := template(t)
	size := int64(len(orig))
	sector := make([]byte, logSector)
	for _, tc := range []struct {
		name  string
		entry []byte
		want  string
	}{
		{"over-headers", encodeLogEntry(1, 0, g, size, size, []testDesc{{off: header1Off, data: sector}}), "region tables"},
		{"into-log", encodeLogEntry(1, 0, g, size, size, []testDesc{{off: mib + 8192, data: sector}}), "into the log"},
		{"beyond-file", encodeLogEntry(1, 0, g, size, size, []testDesc{{off: 1 << 40, zeroLen: 4096}}), "beyond the file"},
		{"file-truncated", encodeLogEntry(1, 0, g, size+mib, size+mib, []testDesc{{off: 5 * mib, data: sector}}), "truncated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := bytes.Clone(orig)
			copy(b[mib:], tc.entry)
			p := filepath.Join(t.TempDir(), "bad.vhdx")
			os.WriteFile(p, b, 0o644)
			setLogGUID(t, p, g)
			_, err := openPath(p, image.OpenOptions{})
			if !errors.Is(err, blockdev.ErrCorrupt) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("open: %v (want %q)", err, tc.want)
			}
		})
	}
}
