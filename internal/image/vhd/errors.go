package vhd

import (
	"fmt"

	"vdisk/internal/image"
)

// ErrNotVHD is returned by Open and Info for a file that has no VHD footer
// ("conectix") at its start or its end. It wraps image.ErrWrongFormat.
var ErrNotVHD = fmt.Errorf("not a VHD image: %w", image.ErrWrongFormat)
