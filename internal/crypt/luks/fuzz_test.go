package luks

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"vdisk/internal/blockdev"
)

// fixtures returns the test images in testdata.
func fixtures(t testing.TB) map[string][]byte {
	t.Helper()
	paths, err := filepath.Glob("testdata/*.img")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	out := map[string][]byte{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(p)] = b
	}
	return out
}

// memOf returns a Mem device holding b.
func memOf(b []byte) blockdev.Device {
	m := blockdev.NewMem(int64(len(b)))
	m.WriteAt(b, 0)
	return m
}

// fuzzLimits keep a fuzzed unlock cheap.
var fuzzLimits = Limits{Argon2MemoryKiB: 64, Argon2Threads: 2, Argon2Time: 4, PBKDF2Iterations: 2000}

// hostileJSON returns variants of the LUKS2 metadata js asking for too
// much: 4 GiB of argon2 memory, 2^32-1 PBKDF2 iterations, 64 threads, a
// huge time cost, and 65 tokens.
func hostileJSON(js []byte) [][]byte {
	var out [][]byte
	for _, r := range [][2]string{
		{`"memory":32768`, `"memory":4194304`},
		{`"iterations":1000`, `"iterations":4294967295`},
		{`"cpus":2`, `"cpus":64`},
		{`"time":4`, `"time":4294967295`},
	} {
		if h := bytes.Replace(js, []byte(r[0]), []byte(r[1]), 1); !bytes.Equal(h, js) {
			out = append(out, h)
		}
	}
	var toks strings.Builder
	for i := range 65 {
		fmt.Fprintf(&toks, `"%d":{"type":"t","keyslots":[]},`, i)
	}
	if h := bytes.Replace(js, []byte(`"tokens":{`), []byte(`"tokens":{`+toks.String()), 1); !bytes.Equal(h, js) {
		out = append(out, bytes.Replace(h, []byte(`,}`), []byte(`}`), 1))
	}
	return out
}

// TestFixtures checks that cryptsetup's headers parse into what its
// commands in testdata/README.md asked for.
func TestFixtures(t *testing.T) {
	fx := fixtures(t)
	tests := []struct {
		file string
		// checks on the dump text
		want []string
	}{
		{"luks2-pbkdf2.img", []string{"Version:       2", "Keyslots area: 262144 bytes", "PBKDF:      pbkdf2", "Iterations: 1000", "sector: 4096 bytes"}},
		{"luks2-argon2id-token.img", []string{"Label:         fixture", "PBKDF:      argon2id", "Memory:     32768 KiB", "Time cost:  4",
			"sector: 512 bytes", "0: vdisk-test (not used by vdisk)", "Keyslots: [1]", "  1: luks2"}},
		{"luks1-cbc-essiv.img", []string{"Version:       1", "cipher: aes-cbc-essiv:sha256", "Hash:       sha1", "Key:        256 bits"}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			b := fx[tt.file]
			var in Info
			if strings.HasPrefix(tt.file, "luks1") {
				h, err := parseLUKS1(b, 1<<40)
				if err != nil {
					t.Fatal(err)
				}
				in = (&Volume{v1: h}).Info()
			} else {
				v, err := Load(memOf(b))
				if err != nil {
					t.Fatal(err)
				}
				if v.UsedSecondary() {
					t.Fatal("secondary header used")
				}
				in = v.Info()
			}
			var sb strings.Builder
			if err := in.WriteText(&sb); err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				if !strings.Contains(sb.String(), w) {
					t.Errorf("dump lacks %q:\n%s", w, sb.String())
				}
			}
		})
	}
}

func FuzzLUKS1Header(f *testing.F) {
	for name, b := range fixtures(f) {
		if strings.HasPrefix(name, "luks1") {
			f.Add(b)
			for _, at := range []int{l1MKDigestIter, l1Slots + 4} { // 2^32-1 iterations
				h := bytes.Clone(b)
				binary.BigEndian.PutUint32(h[at:], 1<<32-1)
				f.Add(h)
			}
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := parseLUKS1(b, 1<<40)
		if err != nil {
			return
		}
		v := &Volume{v1: h}
		_ = v.Info().WriteText(new(bytes.Buffer))
		for _, s := range v.slots() {
			_ = v.slotCost(s, DefaultLimits())
		}
		h2, err := parseLUKS1(h.marshal(), 1<<40)
		if err != nil {
			t.Fatalf("a parsed header does not parse after encoding: %v", err)
		}
		if !bytes.Equal(h2.marshal(), h.marshal()) {
			t.Fatal("encoding is not stable")
		}
	})
}

// FuzzLUKS2Header fuzzes Load on LUKS2 images built from a binary header
// (its first 512 bytes) and a JSON text, with both copies' checksums
// optionally made valid (random bytes never pass a checksum) and the primary
// optionally damaged, so that the fallback to the secondary is fuzzed too.
// The inputs stay small (the fuzzer minimises interesting inputs byte by
// byte, which a whole 32 KiB image makes unbearably slow).
func FuzzLUKS2Header(f *testing.F) {
	for name, b := range fixtures(f) {
		if strings.HasPrefix(name, "luks2") {
			js := bytes.TrimRight(b[luks2BinSize:16<<10], "\x00")
			f.Add(b[:512], js, true, false)
			f.Add(b[:512], js, true, true)
			f.Add(b[:512], js, false, false)
			for _, h := range hostileJSON(js) {
				f.Add(b[:512], h, true, false)
			}
		}
	}
	f.Fuzz(func(t *testing.T, hdr, js []byte, fixSums, damagePrimary bool) {
		const hdrSize = 16 << 10
		if len(hdr) > 512 || len(js) > hdrSize-luks2BinSize {
			return
		}
		img := make([]byte, 2*hdrSize+4096)
		for _, off := range []int{0, hdrSize} {
			c := img[off : off+hdrSize]
			copy(c, hdr)
			copy(c[luks2BinSize:], js)
			if off != 0 {
				copy(c, luks2SecondaryMagic)
				binary.BigEndian.PutUint64(c[l2HdrOffset:], hdrSize)
			}
			if fixSums {
				if sum, err := luks2Checksum(c, "sha256"); err == nil {
					copy(c[l2Csum:], sum)
				}
			}
		}
		if damagePrimary {
			img[luks2BinSize+1] ^= 0xff
		}
		v, err := Load(memOf(img))
		if err != nil {
			return
		}
		if damagePrimary && !v.UsedSecondary() && fixSums {
			t.Fatal("a damaged primary header was used")
		}
		_ = v.Info().WriteText(new(bytes.Buffer))
		_, _ = v.usable()
		_ = v.slots()
		// Unlocking with limits this small derives cheaply (or not at
		// all): it exercises the checks before and after the KDF.
		if key, _, err := v.UnlockKeyContext(context.Background(), []byte("fixture!"), fuzzLimits); err == nil {
			clear(key)
		}
		js2, err := v.meta.marshal()
		if err != nil {
			t.Fatal(err)
		}
		area := make([]byte, v.v2.hdrSize-luks2BinSize)
		if len(js2) >= len(area) {
			return // re-encoding may be longer than the original text
		}
		copy(area, js2)
		if _, err := parseLUKS2JSON(area, v.v2.hdrSize); err != nil {
			t.Fatalf("metadata that parsed does not parse after encoding: %v", err)
		}
	})
}

func FuzzLUKS2JSON(f *testing.F) {
	for name, b := range fixtures(f) {
		if strings.HasPrefix(name, "luks2") {
			js := bytes.TrimRight(b[luks2BinSize:16<<10], "\x00")
			f.Add(js)
			for _, h := range hostileJSON(js) {
				f.Add(h)
			}
		}
	}
	f.Fuzz(func(t *testing.T, js []byte) {
		area := make([]byte, 12<<10)
		if len(js) >= len(area) {
			return
		}
		copy(area, js)
		m, err := parseLUKS2JSON(area, 16<<10)
		if err != nil {
			return
		}
		v := &Volume{v2: &luks2Bin{hdrSize: 16 << 10}, meta: m}
		_ = v.Info().WriteText(new(bytes.Buffer))
		_, _ = v.usable()
		for _, s := range v.slots() {
			_ = v.slotCost(s, DefaultLimits())
		}
	})
}
