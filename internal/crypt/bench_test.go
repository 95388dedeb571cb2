package crypt

import (
	"crypto/aes"
	"fmt"
	"testing"

	"golang.org/x/crypto/xts"

	"vdisk/internal/blockdev"
)

// BenchmarkXTS measures aligned writes and reads through an AES-256-XTS
// Device over a Mem (so mostly the cost of the cipher).
func BenchmarkXTS(b *testing.B) {
	for _, n := range []int{4 << 10, 1 << 20} {
		for _, op := range []string{"write", "read"} {
			b.Run(fmt.Sprintf("%s/%dK", op, n>>10), func(b *testing.B) {
				c, err := NewCipher("aes-xts-plain64", make([]byte, 64))
				if err != nil {
					b.Fatal(err)
				}
				const size = 64 << 20
				d, err := New(blockdev.NewMem(size), Config{Cipher: c, SectorSize: 4096})
				if err != nil {
					b.Fatal(err)
				}
				p := make([]byte, n)
				for i := range p {
					p[i] = byte(i)
				}
				if _, err := d.WriteAt(p, 0); err != nil {
					b.Fatal(err)
				}
				b.SetBytes(int64(n))
				off := int64(0)
				for b.Loop() {
					if op == "write" {
						_, err = d.WriteAt(p, off)
					} else {
						_, err = d.ReadAt(p, off)
					}
					if err != nil {
						b.Fatal(err)
					}
					if op == "write" {
						off = (off + int64(n)) % size
					}
				}
			})
		}
	}
}

// BenchmarkCipherXTS compares the Cipher's AES-256-XTS on one 4096-byte
// sector with golang.org/x/crypto/xts, in the same run (so the ratio holds
// on a loaded machine).
func BenchmarkCipherXTS(b *testing.B) {
	p := make([]byte, 4096)
	b.Run("vdisk", func(b *testing.B) {
		c, err := NewCipher("aes-xts-plain64", make([]byte, 64))
		if err != nil {
			b.Fatal(err)
		}
		b.SetBytes(int64(len(p)))
		for b.Loop() {
			c.Encrypt(p, 1)
		}
	})
	b.Run("x-crypto", func(b *testing.B) {
		c, err := xts.NewCipher(aes.NewCipher, make([]byte, 64))
		if err != nil {
			b.Fatal(err)
		}
		b.SetBytes(int64(len(p)))
		for b.Loop() {
			c.Encrypt(p, p, 1)
		}
	})
}
