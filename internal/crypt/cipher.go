package crypt

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"strings"
)

// Cipher encrypts and decrypts whole encryption sectors in place. It is
// built by NewCipher from a dm-crypt style specification and is safe for
// concurrent use (every call works on its own sector).
type Cipher struct {
	spec    string
	keySize int
	key     []byte // a copy of the key, zeroed by Wipe

	xts  *xtsCipher   // xts modes
	cbc  cipher.Block // cbc modes
	iv   ivMode
	ivBC cipher.Block // essiv: AES keyed with the hash of the key
}

// ivMode is the IV generator of a cipher specification.
type ivMode int

const (
	ivPlain64 ivMode = iota // "plain64": the 64-bit little-endian sector number
	ivPlain                 // "plain": its low 32 bits
	ivESSIV                 // "essiv:sha256": the sector number encrypted under sha256(key)
)

// NewCipher returns the Cipher for spec, a cryptsetup cipher string such as
// "aes-xts-plain64" or "aes-cbc-essiv:sha256", keyed with key (which is
// copied). Supported: aes-xts-plain64 and aes-xts-plain with 32- or 64-byte
// keys (AES-128/256-XTS), aes-cbc-essiv:sha256, aes-cbc-plain64 and
// aes-cbc-plain with 16-, 24- or 32-byte keys. Anything else is
// ErrUnsupportedCipher, naming the part that is not supported.
func NewCipher(spec string, key []byte) (*Cipher, error) {
	parts := strings.SplitN(spec, "-", 3)
	if len(parts) != 3 {
		return nil, fmt.Errorf("crypt: cipher %q: want cipher-mode-iv such as aes-xts-plain64: %w", spec, ErrUnsupportedCipher)
	}
	if parts[0] != "aes" {
		return nil, fmt.Errorf("crypt: cipher %q: block cipher %q: %w (only aes)", spec, parts[0], ErrUnsupportedCipher)
	}
	c := &Cipher{spec: spec, keySize: len(key), key: append([]byte(nil), key...)}
	switch parts[2] {
	case "plain64":
		c.iv = ivPlain64
	case "plain":
		c.iv = ivPlain
	case "essiv:sha256":
		c.iv = ivESSIV
	default:
		return nil, fmt.Errorf("crypt: cipher %q: iv generator %q: %w", spec, parts[2], ErrUnsupportedCipher)
	}
	var err error
	switch parts[1] {
	case "xts":
		if len(key) != 32 && len(key) != 64 {
			return nil, fmt.Errorf("crypt: cipher %q: %d-byte key: %w", spec, len(key), ErrKeySize)
		}
		if c.iv == ivESSIV {
			return nil, fmt.Errorf("crypt: cipher %q: essiv with xts: %w", spec, ErrUnsupportedCipher)
		}
		c.xts, err = newXTS(c.key)
	case "cbc":
		if len(key) != 16 && len(key) != 24 && len(key) != 32 {
			return nil, fmt.Errorf("crypt: cipher %q: %d-byte key: %w", spec, len(key), ErrKeySize)
		}
		c.cbc, err = aes.NewCipher(c.key)
		if err == nil && c.iv == ivESSIV {
			salt := sha256.Sum256(c.key)
			c.ivBC, err = aes.NewCipher(salt[:])
			clear(salt[:])
		}
	default:
		return nil, fmt.Errorf("crypt: cipher %q: mode %q: %w (only xts and cbc)", spec, parts[1], ErrUnsupportedCipher)
	}
	if err != nil {
		return nil, fmt.Errorf("crypt: cipher %q: %w", spec, err)
	}
	return c, nil
}

// Spec returns the cipher specification the Cipher was built from.
func (c *Cipher) Spec() string { return c.spec }

// KeySize returns the key length in bytes.
func (c *Cipher) KeySize() int { return c.keySize }

// Wipe zeroes the Cipher's copy of the key. The expanded key schedules
// inside crypto/aes cannot be reached from here; drop the Cipher after Wipe.
func (c *Cipher) Wipe() { clear(c.key) }

// Encrypt encrypts one sector b in place. iv is the sector number the IV
// generator uses (512-byte units for dm-crypt compatible layouts); len(b)
// must be a positive multiple of 16.
func (c *Cipher) Encrypt(b []byte, iv uint64) {
	if c.xts != nil {
		c.xts.crypt(b, c.tweak(iv), true)
		return
	}
	var prev [aes.BlockSize]byte
	c.cbcIV(&prev, iv)
	for i := 0; i+aes.BlockSize <= len(b); i += aes.BlockSize {
		blk := b[i : i+aes.BlockSize : i+aes.BlockSize]
		subtle.XORBytes(blk, blk, prev[:])
		c.cbc.Encrypt(blk, blk)
		copy(prev[:], blk)
	}
}

// Decrypt decrypts one sector b in place (see Encrypt).
func (c *Cipher) Decrypt(b []byte, iv uint64) {
	if c.xts != nil {
		c.xts.crypt(b, c.tweak(iv), false)
		return
	}
	var prev, cur [aes.BlockSize]byte
	c.cbcIV(&prev, iv)
	for i := 0; i+aes.BlockSize <= len(b); i += aes.BlockSize {
		blk := b[i : i+aes.BlockSize : i+aes.BlockSize]
		copy(cur[:], blk)
		c.cbc.Decrypt(blk, blk)
		subtle.XORBytes(blk, blk, prev[:])
		prev = cur
	}
}

// tweak is the XTS tweak for sector iv: encoded as a little-endian 128-bit
// number it is exactly plain64 (plain truncates to 32 bits).
func (c *Cipher) tweak(iv uint64) uint64 {
	if c.iv == ivPlain {
		return iv & 0xffffffff
	}
	return iv
}

// cbcIV fills b with the CBC IV of sector iv.
func (c *Cipher) cbcIV(b *[aes.BlockSize]byte, iv uint64) {
	switch c.iv {
	case ivPlain:
		binary.LittleEndian.PutUint32(b[:], uint32(iv))
	case ivPlain64:
		binary.LittleEndian.PutUint64(b[:], iv)
	case ivESSIV:
		binary.LittleEndian.PutUint64(b[:], iv)
		c.ivBC.Encrypt(b[:], b[:])
	}
}
