package vhdx

import "errors"

// ErrNotVHDX is returned by Open and Info for a file without the
// "vhdxfile" signature.
var ErrNotVHDX = errors.New("not a VHDX image")

// ErrDirtyLog is returned by a read-only Open of an image whose log holds
// updates that were never applied (the writer crashed): replaying them
// needs write access.
var ErrDirtyLog = errors.New("VHDX log must be replayed; open the image read-write once")
