package crypt

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"testing"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCipherIEEE1619(t *testing.T) {
	for i, v := range ieee1619Vectors {
		c, err := NewCipher("aes-xts-plain64", unhex(t, v.key))
		if err != nil {
			t.Fatalf("vector %d: %v", i, err)
		}
		b := unhex(t, v.plaintext)
		c.Encrypt(b, v.sector)
		if want := unhex(t, v.ciphertext); !bytes.Equal(b, want) {
			t.Errorf("vector %d: encrypt\n got %x\nwant %x", i, b, want)
		}
		c.Decrypt(b, v.sector)
		if want := unhex(t, v.plaintext); !bytes.Equal(b, want) {
			t.Errorf("vector %d: decrypt does not invert encrypt", i)
		}
	}
}

// TestCipherIVModes checks each IV generator against an independent
// computation with crypto/cipher.
func TestCipherIVModes(t *testing.T) {
	key := bytes.Repeat([]byte{0x5a, 0x17}, 16)
	const sector = 0x1_0000_0007 // above 32 bits: plain and plain64 differ
	cbcRef := func(iv []byte) []byte {
		blk, _ := aes.NewCipher(key)
		out := make([]byte, 512)
		cipher.NewCBCEncrypter(blk, iv).CryptBlocks(out, bytes.Repeat([]byte{7}, 512))
		return out
	}
	le := func(n uint64) []byte { b := make([]byte, 16); binary.LittleEndian.PutUint64(b, n); return b }
	essiv := func(n uint64) []byte {
		h := sha256.Sum256(key)
		blk, _ := aes.NewCipher(h[:])
		iv := le(n)
		blk.Encrypt(iv, iv)
		return iv
	}
	xtsRef := func(n uint64) []byte {
		c, _ := NewCipher("aes-xts-plain64", key)
		b := bytes.Repeat([]byte{7}, 512)
		c.Encrypt(b, n)
		return b
	}
	tests := []struct {
		spec string
		want []byte
	}{
		{"aes-cbc-essiv:sha256", cbcRef(essiv(sector))},
		{"aes-cbc-plain64", cbcRef(le(sector))},
		{"aes-cbc-plain", cbcRef(le(sector & 0xffffffff))},
		{"aes-xts-plain", xtsRef(sector & 0xffffffff)},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			c, err := NewCipher(tt.spec, key)
			if err != nil {
				t.Fatal(err)
			}
			b := bytes.Repeat([]byte{7}, 512)
			c.Encrypt(b, sector)
			if !bytes.Equal(b, tt.want) {
				t.Fatalf("ciphertext differs from the reference")
			}
			c.Decrypt(b, sector)
			if !bytes.Equal(b, bytes.Repeat([]byte{7}, 512)) {
				t.Fatalf("decrypt does not invert encrypt")
			}
		})
	}
}

func TestNewCipherRefuses(t *testing.T) {
	tests := []struct {
		spec   string
		keyLen int
		want   error
	}{
		{"serpent-xts-plain64", 64, ErrUnsupportedCipher},
		{"aes-ctr-plain64", 32, ErrUnsupportedCipher},
		{"aes-xts-benbi", 64, ErrUnsupportedCipher},
		{"aes-xts-essiv:sha256", 64, ErrUnsupportedCipher},
		{"aes-cbc-essiv:sha1", 32, ErrUnsupportedCipher},
		{"aes", 32, ErrUnsupportedCipher},
		{"aes-xts-plain64", 48, ErrKeySize},
		{"aes-xts-plain64", 16, ErrKeySize},
		{"aes-cbc-essiv:sha256", 64, ErrKeySize},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			_, err := NewCipher(tt.spec, make([]byte, tt.keyLen))
			if !errors.Is(err, tt.want) {
				t.Fatalf("NewCipher(%q, %d bytes) = %v, want %v", tt.spec, tt.keyLen, err, tt.want)
			}
		})
	}
}

func TestCipherWipe(t *testing.T) {
	key := bytes.Repeat([]byte{1}, 64)
	c, err := NewCipher("aes-xts-plain64", key)
	if err != nil {
		t.Fatal(err)
	}
	c.Wipe()
	if !bytes.Equal(c.key, make([]byte, 64)) {
		t.Fatal("key copy not zeroed")
	}
	if !bytes.Equal(key, bytes.Repeat([]byte{1}, 64)) {
		t.Fatal("Wipe touched the caller's key")
	}
}
