package loop

import "errors"

// ErrBusy is returned by Detach when the loop device is still in use
// (mounted, held by another driver, or open in another process); the
// device stays attached. DetachLazy detaches such a device on last close.
var ErrBusy = errors.New("loop device is busy")

// ErrNoFreeDevice is returned by Attach when the kernel has no free loop
// device to hand out, or every free one was taken by a concurrent attach
// maxAttachAttempts times in a row.
var ErrNoFreeDevice = errors.New("no free loop device")

// ErrNotAttached is returned by Lookup, Detach and DetachLazy for a loop
// device that has no backing file.
var ErrNotAttached = errors.New("loop device is not attached")

// ErrNotLoop is returned by Lookup for a path that is not a loop device.
var ErrNotLoop = errors.New("not a loop device")
