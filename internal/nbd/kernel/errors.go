package kernel

import "errors"

// ErrUnavailable is returned when the kernel has no NBD client: neither the
// netlink family nor /dev/nbd0 exists (modprobe nbd).
var ErrUnavailable = errors.New("the kernel nbd client is not available")

// ErrBusy is returned when the requested /dev/nbdN is already connected, or
// when no free device is left for the ioctl interface.
var ErrBusy = errors.New("nbd device is busy")

// ErrNotConnected is returned by Reconfigure for a device that has no
// configuration to reconfigure.
var ErrNotConnected = errors.New("nbd device is not connected")
