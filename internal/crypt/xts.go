package crypt

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
)

// xtsCipher is AES-XTS (IEEE 1619) for whole data units that are a multiple
// of the block size, so without ciphertext stealing. It is
// golang.org/x/crypto/xts with the tweak kept in two words and the XORs done
// 64 bits at a time, which is several times faster; the IEEE 1619 vectors
// and x/crypto/xts itself check it in the tests. It is safe for concurrent
// use: the state of a call lives on its stack.
type xtsCipher struct {
	k1, k2 cipher.Block
}

func newXTS(key []byte) (*xtsCipher, error) {
	k1, err := aes.NewCipher(key[:len(key)/2])
	if err != nil {
		return nil, err
	}
	k2, err := aes.NewCipher(key[len(key)/2:])
	if err != nil {
		return nil, err
	}
	return &xtsCipher{k1: k1, k2: k2}, nil
}

// crypt encrypts or decrypts b in place as data unit iv.
func (c *xtsCipher) crypt(b []byte, iv uint64, encrypt bool) {
	var t [aes.BlockSize]byte
	binary.LittleEndian.PutUint64(t[:8], iv)
	c.k2.Encrypt(t[:], t[:])
	lo, hi := binary.LittleEndian.Uint64(t[:8]), binary.LittleEndian.Uint64(t[8:])
	le := binary.LittleEndian
	for i := 0; i+aes.BlockSize <= len(b); i += aes.BlockSize {
		blk := b[i : i+aes.BlockSize : i+aes.BlockSize]
		le.PutUint64(blk[:8], le.Uint64(blk[:8])^lo)
		le.PutUint64(blk[8:], le.Uint64(blk[8:])^hi)
		if encrypt {
			c.k1.Encrypt(blk, blk)
		} else {
			c.k1.Decrypt(blk, blk)
		}
		le.PutUint64(blk[:8], le.Uint64(blk[:8])^lo)
		le.PutUint64(blk[8:], le.Uint64(blk[8:])^hi)
		// Multiply the tweak by α in GF(2^128), little-endian.
		carry := hi >> 63
		hi = hi<<1 | lo>>63
		lo = lo<<1 ^ carry*0x87
	}
}
