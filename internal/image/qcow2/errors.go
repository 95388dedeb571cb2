package qcow2

import "errors"

// ErrNotQcow2 is returned by Open and Info for a file that does not start
// with the qcow2 magic.
var ErrNotQcow2 = errors.New("not a qcow2 image")

// ErrBusy is returned by Close when it is called while writes are still
// in flight (a caller bug: Close must not race with I/O).
var ErrBusy = errors.New("image has writes in flight")
