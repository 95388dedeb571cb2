package vhd

import "errors"

// ErrNotVHD is returned by Open and Info for a file that has no VHD footer
// ("conectix") at its start or its end.
var ErrNotVHD = errors.New("not a VHD image")
