package vmdk

import "errors"

// ErrNotVMDK is returned by Open and Info for a file that is neither a
// VMDK descriptor nor a sparse extent ("KDMV").
var ErrNotVMDK = errors.New("not a VMDK image")

// ErrExtentPath is returned when an extent file name is absolute, climbs
// out of the descriptor's directory, or resolves (through symlinks) to a
// file outside it.
var ErrExtentPath = errors.New("extent path outside the descriptor's directory")
