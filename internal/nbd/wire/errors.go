package wire

import "errors"

// ErrBadMagic is returned when a message does not start with the magic
// number its position requires.
var ErrBadMagic = errors.New("nbd: bad magic number")

// ErrTooLong is returned when a length field exceeds the bound the decoder
// accepts (MaxOptionLen, MaxStringLen, MaxQueries, ...).
var ErrTooLong = errors.New("nbd: length exceeds limit")

// ErrMalformed is returned when a message's fields are inconsistent with
// each other or with its length (truncated payload, trailing bytes).
var ErrMalformed = errors.New("nbd: malformed message")

// ErrBadString is returned for a string that is not valid UTF-8 or contains
// a NUL byte.
var ErrBadString = errors.New("nbd: string is not UTF-8 without NUL")
