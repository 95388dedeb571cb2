package qcow2

import (
	"errors"
	"fmt"

	"vdisk/internal/image"
)

// ErrNotQcow2 is returned by OpenFile, InfoFile and CheckFile for a file
// that does not start with the qcow2 magic; it wraps image.ErrWrongFormat.
var ErrNotQcow2 = fmt.Errorf("not a qcow2 image: %w", image.ErrWrongFormat)

// ErrBusy is returned by Close when it is called while writes are still
// in flight (a caller bug: Close must not race with I/O).
var ErrBusy = errors.New("image has writes in flight")
