package vmdk

import (
	"fmt"

	"vdisk/internal/image"
)

// ErrNotVMDK is returned for a file that is neither a VMDK descriptor nor
// a sparse extent ("KDMV"); it wraps image.ErrWrongFormat.
var ErrNotVMDK = fmt.Errorf("not a VMDK image: %w", image.ErrWrongFormat)
