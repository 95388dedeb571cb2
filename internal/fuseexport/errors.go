package fuseexport

import "errors"

// ErrBusy is returned by Close while the exported file is still in use
// (a loop device attached to it, or a process holding it open). The mount
// stays up; detach the user and call Close again, or call CloseForce.
var ErrBusy = errors.New("fuse export is busy")

// ErrClosed is returned by Close and CloseForce after the export was
// already closed.
var ErrClosed = errors.New("fuse export is closed")
