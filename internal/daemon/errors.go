package daemon

import "errors"

// ErrRunning is returned by Run when another daemon answers on the socket
// or holds its lock.
var ErrRunning = errors.New("another vdisk daemon is running")

// ErrFUSEUnavailable is returned (wrapped) by an open via FUSE when the
// kernel's FUSE is missing (/dev/fuse absent or not the FUSE device).
var ErrFUSEUnavailable = errors.New("FUSE is not available")

// ErrBadState is returned (wrapped) when the state file cannot be parsed.
var ErrBadState = errors.New("state file is malformed")

// ErrEncryptedLocked is the reason a restarted daemon gives for an
// encrypted disk it cannot reopen: the passphrase is never stored.
var ErrEncryptedLocked = errors.New("encrypted: run vdisk open FILE again to unlock")
