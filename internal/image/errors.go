package image

import "errors"

// ErrUnknownFormat is returned by Open, Create and Info for a format name
// no registered format has.
var ErrUnknownFormat = errors.New("unknown image format")

// ErrUnsupported is returned when an image uses a feature vdisk does not
// implement (encryption inside a format, external data files, ...).
var ErrUnsupported = errors.New("image feature not supported")

// ErrBackingRefused is returned when a backing file name is not allowed:
// a json: or protocol name, a path outside OpenOptions.BackingDir, or a
// loop in the chain.
var ErrBackingRefused = errors.New("backing file refused")

// ErrChainTooDeep is returned when a backing chain is longer than
// OpenOptions.MaxChainDepth.
var ErrChainTooDeep = errors.New("backing chain too deep")

// ErrNoCheck is returned by Check for a format that has no consistency
// checks (raw).
var ErrNoCheck = errors.New("format does not support checks")

// ErrWrongFormat says a file is not an image of the format it was opened
// as (--format vhd on a raw file): every format's "not this format"
// wraps it, so callers can tell a user's mistake from a damaged image.
var ErrWrongFormat = errors.New("not an image of that format")
