package vdi

import (
	"fmt"

	"vdisk/internal/image"
)

// ErrNotVDI is returned by Open and Info for a file without the VDI
// signature. It wraps image.ErrWrongFormat.
var ErrNotVDI = fmt.Errorf("not a VDI image: %w", image.ErrWrongFormat)
