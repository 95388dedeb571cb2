package ublk

import "errors"

// ErrUnavailable is returned by Serve when the kernel has no ublk driver
// (no /dev/ublk-control).
var ErrUnavailable = errors.New("ublk is not available")

// ErrClosed is returned by Close after the first call.
var ErrClosed = errors.New("ublk disk is closed")

// ErrNotRecoverable is returned by Recover for a device created without
// user recovery.
var ErrNotRecoverable = errors.New("ublk device was not created recoverable")
