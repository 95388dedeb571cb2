package crypt

import "errors"

// ErrUnsupportedCipher is returned by NewCipher for a cipher specification
// this package does not implement (another block cipher, mode or IV
// generator).
var ErrUnsupportedCipher = errors.New("unsupported cipher")

// ErrKeySize is returned by NewCipher when the key length does not fit the
// cipher (XTS takes 32 or 64 bytes, CBC 16, 24 or 32).
var ErrKeySize = errors.New("invalid key size for the cipher")

// ErrConfig is returned by New for an invalid Config: a sector size that is
// not a power of two from 512 to 4096, a negative or misaligned offset, or
// a payload that does not fit the inner device.
var ErrConfig = errors.New("invalid crypt configuration")
