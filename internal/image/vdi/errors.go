package vdi

import "errors"

// ErrNotVDI is returned by Open and Info for a file without the VDI
// signature.
var ErrNotVDI = errors.New("not a VDI image")
