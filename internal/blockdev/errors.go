package blockdev

import (
	"errors"
	"fmt"
)

// ErrClosed is returned by every method of a Device after Close.
var ErrClosed = errors.New("device is closed")

// ErrOutOfRange is returned (inside a *RangeError) for a read or write that
// does not lie wholly inside the device.
var ErrOutOfRange = errors.New("range outside the device")

// ErrReadOnly is returned by WriteAt, Trim and WriteZeroes on a device
// opened read-only.
var ErrReadOnly = errors.New("device is read-only")

// ErrNotSupported is returned by a capability helper when the device lacks
// the capability and no honest fallback exists.
var ErrNotSupported = errors.New("operation not supported by the device")

// ErrNoSpace is returned when the storage under a device is full.
var ErrNoSpace = errors.New("no space left on the storage")

// ErrLocked is returned by an open of an image another process holds.
var ErrLocked = errors.New("image is locked by another process")

// ErrCorrupt is returned when the metadata of an image is malformed.
var ErrCorrupt = errors.New("image is corrupt")

// RangeError records an access outside a device. It matches ErrOutOfRange
// with errors.Is.
type RangeError struct {
	Off, Len, Size int64
}

func (e *RangeError) Error() string {
	return fmt.Sprintf("range [%d, +%d) outside the device of %d bytes", e.Off, e.Len, e.Size)
}

// Is reports whether target is ErrOutOfRange.
func (e *RangeError) Is(target error) bool { return target == ErrOutOfRange }
