package vhdx

import (
	"errors"
	"fmt"

	"vdisk/internal/image"
)

// ErrNotVHDX is returned for a file without the "vhdxfile" signature; it
// wraps image.ErrWrongFormat.
var ErrNotVHDX = fmt.Errorf("not a VHDX image: %w", image.ErrWrongFormat)

// ErrDirtyLog is returned by a read-only Open of an image whose log holds
// updates that were never applied (the writer crashed): replaying them
// needs write access.
var ErrDirtyLog = errors.New("VHDX log must be replayed; open the image read-write once")
