// Package objstore is the small object-store interface the chunked block
// store stands on: read a range of an object, put a whole object (optionally
// conditional on the object's current version), delete, list by prefix and
// head. It holds an in-memory implementation (Mem) for tests and two
// decorators: Logged (a debug log line per request) and Counter (request and
// byte counts, for the "requests per GiB" metric). The S3 implementation
// lives in objstore/s3, the only package that imports the AWS SDK.
//
// Keys are opaque strings; implementations list them in byte order. ETags are
// opaque strings as the store returns them; a caller passes them back
// verbatim in PutOptions.IfMatch.
package objstore

import (
	"context"
	"time"
)

// Info describes a stored object.
type Info struct {
	Key     string
	Size    int64
	ETag    string
	ModTime time.Time
}

// PutOptions make a Put conditional. At most one of the two may be set.
type PutOptions struct {
	// IfNoneMatch makes the Put fail with ErrPreconditionFailed when an
	// object with the key exists (HTTP If-None-Match: *).
	IfNoneMatch bool
	// IfMatch makes the Put fail unless the object exists with this ETag:
	// ErrPreconditionFailed when its ETag differs, ErrNotFound when there is
	// no object.
	IfMatch string
}

// GetIntoer is a Store that can read into the caller's buffer.
type GetIntoer interface {
	// GetInto is Get of len(p) bytes into p; it returns how many bytes
	// it read.
	GetInto(ctx context.Context, key string, off int64, p []byte) (int, Info, error)
}

// GetInto reads up to len(p) bytes of the object at key from off into p:
// through s's GetInto when it has one, else with Get and a copy.
func GetInto(ctx context.Context, s Store, key string, off int64, p []byte) (int, Info, error) {
	if g, ok := s.(GetIntoer); ok {
		return g.GetInto(ctx, key, off, p)
	}
	b, in, err := s.Get(ctx, key, off, int64(len(p)))
	return copy(p, b), in, err
}

// Store is an object store. Every method may be called from many
// goroutines at once; each blocks until the store has answered or ctx is
// done.
type Store interface {
	// Get returns up to n bytes of the object at key starting at off
	// (n < 0: to the end), and the object's Info. Fewer than n bytes come
	// back only when the object ends first; an off at or past the end gives
	// no bytes and no error. A missing object is ErrNotFound.
	Get(ctx context.Context, key string, off, n int64) ([]byte, Info, error)
	// Put stores data as the whole object at key, replacing any previous
	// object, and returns the new object's Info.
	Put(ctx context.Context, key string, data []byte, opts PutOptions) (Info, error)
	// Delete removes the object at key. Deleting a missing object is not
	// an error.
	Delete(ctx context.Context, key string) error
	// List calls fn for every object whose key starts with prefix, in
	// byte order of the keys. An error from fn stops the listing and is
	// returned.
	List(ctx context.Context, prefix string, fn func(Info) error) error
	// Head returns the Info of the object at key, or ErrNotFound.
	Head(ctx context.Context, key string) (Info, error)
}
