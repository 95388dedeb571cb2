package objstore

import (
	"context"
	"errors"
)

// Observer hears of every request an Observed store makes: the operation
// (get, put, delete, list, head), its outcome (ok, not_found,
// precondition_failed, error) and the payload bytes it read and wrote.
// It is called from many goroutines at once.
type Observer func(op, status string, read, written int64)

// Observed is a Store decorator that tells obs of every request, for
// metrics that must not know the store's types.
type Observed struct {
	inner Store
	obs   Observer
}

var _ Store = (*Observed)(nil)

// NewObserved wraps inner, telling obs of its requests.
func NewObserved(inner Store, obs Observer) *Observed { return &Observed{inner: inner, obs: obs} }

// Status names the outcome of a request for an Observer.
func Status(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrNotFound):
		return "not_found"
	case errors.Is(err, ErrPreconditionFailed):
		return "precondition_failed"
	}
	return "error"
}

func (s *Observed) Get(ctx context.Context, key string, off, n int64) ([]byte, Info, error) {
	b, in, err := s.inner.Get(ctx, key, off, n)
	s.obs("get", Status(err), int64(len(b)), 0)
	return b, in, err
}

func (s *Observed) Put(ctx context.Context, key string, data []byte, opts PutOptions) (Info, error) {
	in, err := s.inner.Put(ctx, key, data, opts)
	written := int64(0)
	if err == nil {
		written = int64(len(data))
	}
	s.obs("put", Status(err), 0, written)
	return in, err
}

func (s *Observed) Delete(ctx context.Context, key string) error {
	err := s.inner.Delete(ctx, key)
	s.obs("delete", Status(err), 0, 0)
	return err
}

func (s *Observed) List(ctx context.Context, prefix string, fn func(Info) error) error {
	err := s.inner.List(ctx, prefix, fn)
	s.obs("list", Status(err), 0, 0)
	return err
}

func (s *Observed) Head(ctx context.Context, key string) (Info, error) {
	in, err := s.inner.Head(ctx, key)
	s.obs("head", Status(err), 0, 0)
	return in, err
}

// GetInto reads through the inner store's GetInto when it has one (so the
// decorator keeps its pooled reads).
func (s *Observed) GetInto(ctx context.Context, key string, off int64, p []byte) (int, Info, error) {
	n, in, err := GetInto(ctx, s.inner, key, off, p)
	s.obs("get", Status(err), int64(n), 0)
	return n, in, err
}
