package objstore

import "errors"

// ErrNotFound is returned by Get, Head and an IfMatch Put when no object has
// the key.
var ErrNotFound = errors.New("object not found")

// ErrPreconditionFailed is returned by a conditional Put whose condition does
// not hold: the object exists (IfNoneMatch) or has another ETag (IfMatch).
var ErrPreconditionFailed = errors.New("object precondition failed")

// ErrInvalidOptions is returned by Put when both IfNoneMatch and IfMatch are
// set.
var ErrInvalidOptions = errors.New("put options set both IfNoneMatch and IfMatch")
