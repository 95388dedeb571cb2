package crypt

import (
	"bytes"
	"crypto/aes"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"golang.org/x/crypto/xts"

	"vdisk/internal/blockdev"
	"vdisk/internal/blockdev/blockdevtest"
)

// newTestDevice returns a crypt device over a fresh Mem of innerSize bytes,
// and the Mem.
func newTestDevice(t *testing.T, spec string, key []byte, cfg Config, innerSize int64) (blockdev.Device, *blockdev.Mem) {
	t.Helper()
	c, err := NewCipher(spec, key)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Cipher = c
	m := blockdev.NewMem(innerSize)
	d, err := New(m, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d, m
}

// TestDeviceIEEE1619 writes the plaintexts of the 512-byte IEEE 1619
// vectors through a Device and finds their ciphertexts on the inner device
// at the sectors the vectors name (plain64 IV = payload sector + IVOffset).
func TestDeviceIEEE1619(t *testing.T) {
	const payload = 8192
	for i, v := range ieee1619Vectors {
		pt := unhex(t, v.plaintext)
		if len(pt) != 512 {
			continue
		}
		for _, ivOff := range []uint64{0, v.sector} {
			t.Run(fmt.Sprintf("vector%d/ivoffset%d", i, ivOff), func(t *testing.T) {
				d, m := newTestDevice(t, "aes-xts-plain64", unhex(t, v.key),
					Config{Offset: payload, IVOffset: ivOff}, payload+256<<10)
				off := int64(v.sector-ivOff) * 512
				if _, err := d.WriteAt(pt, off); err != nil {
					t.Fatal(err)
				}
				ct := make([]byte, 512)
				if _, err := m.ReadAt(ct, payload+off); err != nil {
					t.Fatal(err)
				}
				if want := unhex(t, v.ciphertext); !bytes.Equal(ct, want) {
					t.Fatalf("inner sector holds %x…, want %x…", ct[:16], want[:16])
				}
				got := make([]byte, 512)
				if _, err := d.ReadAt(got, off); err != nil || !bytes.Equal(got, pt) {
					t.Fatalf("read back: err %v, equal %v", err, bytes.Equal(got, pt))
				}
			})
		}
	}
}

// TestDeviceRoundTrip does random unaligned writes and reads against a
// model, then decrypts every sector of the inner device independently with
// x/crypto/xts and compares it with the model.
func TestDeviceRoundTrip(t *testing.T) {
	tests := []struct {
		spec    string
		keyLen  int
		ss      int
		ivOff   uint64
		payload int64
	}{
		{"aes-xts-plain64", 64, 512, 0, 4096},
		{"aes-xts-plain64", 32, 4096, 0, 1 << 20},
		{"aes-xts-plain64", 64, 4096, 1000, 8192},
		{"aes-cbc-essiv:sha256", 32, 512, 0, 4096},
		{"aes-cbc-plain64", 16, 4096, 3, 4096},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%d/%d", tt.spec, tt.keyLen*8, tt.ss), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, uint64(tt.ss)))
			key := make([]byte, tt.keyLen)
			for i := range key {
				key[i] = byte(rng.Uint32())
			}
			const size = 3<<20 + 4096
			d, m := newTestDevice(t, tt.spec, key, Config{SectorSize: tt.ss, Offset: tt.payload, IVOffset: tt.ivOff}, tt.payload+size)
			if d.Size() != size {
				t.Fatalf("size %d, want %d", d.Size(), size)
			}
			if got := blockdev.InfoOf(d).LogicalBlockSize; got != uint32(tt.ss) {
				t.Fatalf("logical block size %d, want %d", got, tt.ss)
			}
			model := make([]byte, size) // a fresh volume reads as zeroes
			for range 200 {
				n := rng.IntN(3*chunkSize/2) + 1
				if rng.IntN(4) == 0 {
					n = rng.IntN(40) + 1
				}
				off := rng.Int64N(size - int64(n) + 1)
				p := make([]byte, n)
				for i := range p {
					p[i] = byte(rng.Uint32())
				}
				if w, err := d.WriteAt(p, off); err != nil || w != n {
					t.Fatalf("write %d at %d: %d, %v", n, off, w, err)
				}
				copy(model[off:], p)
				rn := rng.IntN(2*chunkSize) + 1
				roff := rng.Int64N(size - int64(rn) + 1)
				got := make([]byte, rn)
				if r, err := d.ReadAt(got, roff); err != nil || r != rn {
					t.Fatalf("read %d at %d: %d, %v", rn, roff, r, err)
				}
				if !bytes.Equal(got, model[roff:roff+int64(rn)]) {
					t.Fatalf("read %d at %d differs from the model", rn, roff)
				}
			}
			if tt.spec != "aes-xts-plain64" {
				return
			}
			ref, err := xts.NewCipher(aes.NewCipher, key)
			if err != nil {
				t.Fatal(err)
			}
			raw := make([]byte, size)
			if _, err := m.ReadAt(raw, tt.payload); err != nil {
				t.Fatal(err)
			}
			for s := 0; s < size; s += tt.ss {
				sec := raw[s : s+tt.ss]
				if !blockdev.IsZero(sec) { // never written: reads as zeroes
					ref.Decrypt(sec, sec, uint64(s/512)+tt.ivOff)
				}
				if !bytes.Equal(sec, model[s:s+tt.ss]) {
					t.Fatalf("inner sector at %d does not decrypt to the model", s)
				}
			}
		})
	}
}

// TestDeviceSameSectorWrites has many goroutines write disjoint bytes of the
// same sectors at once; read-modify-write must not lose any of them.
func TestDeviceSameSectorWrites(t *testing.T) {
	d, _ := newTestDevice(t, "aes-xts-plain64", make([]byte, 64), Config{SectorSize: 4096}, 64<<10)
	const writers, piece, rounds = 32, 96, 40 // pieces straddle the two sectors at 2048
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			p := make([]byte, piece)
			for r := range rounds {
				for i := range p {
					p[i] = byte(w*7 + r)
				}
				if _, err := d.WriteAt(p, 2048+int64(w*piece)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	got := make([]byte, writers*piece)
	if _, err := d.ReadAt(got, 2048); err != nil {
		t.Fatal(err)
	}
	for w := range writers {
		want := bytes.Repeat([]byte{byte(w*7 + rounds - 1)}, piece)
		if !bytes.Equal(got[w*piece:(w+1)*piece], want) {
			t.Fatalf("writer %d's last write was lost", w)
		}
	}
}

func TestDeviceDiscards(t *testing.T) {
	d, _ := newTestDevice(t, "aes-xts-plain64", make([]byte, 64), Config{}, 1<<20)
	if _, ok := d.(blockdev.Trimmer); ok {
		t.Fatal("a Device without AllowDiscards is a Trimmer")
	}
	if err := blockdev.Trim(d, 0, 4096); !errors.Is(err, blockdev.ErrNotSupported) {
		t.Fatalf("Trim without AllowDiscards: %v, want ErrNotSupported", err)
	}

	d, m := newTestDevice(t, "aes-xts-plain64", make([]byte, 64), Config{SectorSize: 4096, Offset: 4096, AllowDiscards: true}, 1<<20)
	tr, ok := d.(blockdev.Trimmer)
	if !ok {
		t.Fatal("AllowDiscards over a Mem is not a Trimmer")
	}
	data := bytes.Repeat([]byte{0xab}, 5*4096)
	if _, err := d.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := tr.Trim(100, 4*4096); err != nil { // covers sectors 1..3 whole, 0 and 4 partly
		t.Fatal(err)
	}
	raw := make([]byte, 5*4096)
	if _, err := m.ReadAt(raw, 4096); err != nil {
		t.Fatal(err)
	}
	if !blockdev.IsZero(raw[4096 : 4*4096]) {
		t.Fatal("whole sectors were not discarded on the inner device")
	}
	if blockdev.IsZero(raw[:4096]) || blockdev.IsZero(raw[4*4096:]) {
		t.Fatal("partial sectors were discarded, or zeroed in clear")
	}
	got := make([]byte, 5*4096)
	if _, err := d.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(data)
	clear(want[100 : 100+4*4096])
	if !bytes.Equal(got, want) {
		t.Fatal("a trimmed range does not read as zeroes, or bytes around it changed")
	}
}

// TestDeviceZeroSectors checks that an all-zero inner sector reads as
// zeroes while any other decrypts.
func TestDeviceZeroSectors(t *testing.T) {
	d, m := newTestDevice(t, "aes-xts-plain64", make([]byte, 64), Config{}, 1<<20)
	got := make([]byte, 4096)
	if _, err := d.ReadAt(got, 8192); err != nil || !blockdev.IsZero(got) {
		t.Fatalf("a never-written range reads %x…, %v", got[:8], err)
	}
	if _, err := m.WriteAt([]byte{1}, 8192); err != nil {
		t.Fatal(err)
	}
	if _, err := d.ReadAt(got, 8192); err != nil || blockdev.IsZero(got[:512]) || !blockdev.IsZero(got[512:]) {
		t.Fatal("a non-zero inner sector was not decrypted, or its neighbours were")
	}
}

func TestDeviceWriteZeroes(t *testing.T) {
	d, m := newTestDevice(t, "aes-xts-plain64", make([]byte, 64), Config{}, 1<<20)
	if _, err := d.WriteAt(bytes.Repeat([]byte{1}, 8192), 0); err != nil {
		t.Fatal(err)
	}
	if err := blockdev.WriteZeroes(d, 100, 5000, true); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 8192)
	if _, err := d.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	want := bytes.Repeat([]byte{1}, 8192)
	clear(want[100:5100])
	if !bytes.Equal(got, want) {
		t.Fatal("zeroed range does not read back as zeroes")
	}
	raw := make([]byte, 512)
	if _, err := m.ReadAt(raw, 1024); err != nil {
		t.Fatal(err)
	}
	if blockdev.IsZero(raw) {
		t.Fatal("zeroes were stored in clear")
	}
	ext, err := blockdev.Extents(d, 0, d.Size())
	if err != nil || len(ext) != 1 || ext[0].Flags != 0 {
		t.Fatalf("extents %v, %v: want one data extent", ext, err)
	}
}

func TestDeviceClose(t *testing.T) {
	c, err := NewCipher("aes-xts-plain64", bytes.Repeat([]byte{9}, 64))
	if err != nil {
		t.Fatal(err)
	}
	m := blockdev.NewMem(1 << 20)
	d, err := New(m, Config{Cipher: c})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if !blockdev.IsZero(c.key) {
		t.Fatal("Close left the key in memory")
	}
	if err := m.Flush(); !errors.Is(err, blockdev.ErrClosed) {
		t.Fatal("Close did not close the inner device")
	}
	if _, err := d.ReadAt(make([]byte, 512), 0); !errors.Is(err, blockdev.ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}
	if err := d.Close(); !errors.Is(err, blockdev.ErrClosed) {
		t.Fatalf("second close: %v", err)
	}
}

func TestNewRefuses(t *testing.T) {
	c, err := NewCipher("aes-xts-plain64", make([]byte, 64))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no cipher", Config{}},
		{"sector size", Config{Cipher: c, SectorSize: 8192}},
		{"odd sector size", Config{Cipher: c, SectorSize: 1536}},
		{"negative offset", Config{Cipher: c, Offset: -512}},
		{"misaligned offset", Config{Cipher: c, Offset: 100}},
		{"offset past end", Config{Cipher: c, Offset: 2 << 20}},
		{"size too big", Config{Cipher: c, Offset: 4096, Size: 1 << 20}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(blockdev.NewMem(1<<20), tt.cfg); !errors.Is(err, ErrConfig) {
				t.Fatalf("New: %v, want ErrConfig", err)
			}
		})
	}
}

func TestConformance(t *testing.T) {
	for _, tt := range []struct {
		ss      int
		discard bool
	}{{512, false}, {4096, false}, {4096, true}} {
		ss := tt.ss
		t.Run(fmt.Sprintf("%d/discards=%v", ss, tt.discard), func(t *testing.T) {
			blockdevtest.Run(t, func(t *testing.T, size int64) blockdev.Device {
				c, err := NewCipher("aes-xts-plain64", bytes.Repeat([]byte{3}, 64))
				if err != nil {
					t.Fatal(err)
				}
				d, err := New(blockdev.NewMem(size+8192), Config{Cipher: c, SectorSize: ss, Offset: 8192, AllowDiscards: tt.discard})
				if err != nil {
					t.Fatal(err)
				}
				return d
			})
		})
	}
}
