package metrics

import (
	"context"
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"vdisk/internal/storage/objstore"
)

// Store returns st with its requests counted by operation and outcome,
// and the payload bytes it moves.
func (r *Registry) Store(st objstore.Store) objstore.Store {
	s := &countedStore{inner: st, r: r, read: r.storeBytes.WithLabelValues("read"), written: r.storeBytes.WithLabelValues("written")}
	return s
}

type countedStore struct {
	inner         objstore.Store
	r             *Registry
	read, written prometheus.Counter
}

var _ objstore.Store = (*countedStore)(nil)

// status names the outcome of a request.
func status(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, objstore.ErrNotFound):
		return "not_found"
	case errors.Is(err, objstore.ErrPreconditionFailed):
		return "precondition_failed"
	}
	return "error"
}

func (s *countedStore) count(op string, err error) {
	s.r.storeRequests.WithLabelValues(op, status(err)).Inc()
}

func (s *countedStore) Get(ctx context.Context, key string, off, n int64) ([]byte, objstore.Info, error) {
	b, in, err := s.inner.Get(ctx, key, off, n)
	s.count("get", err)
	s.read.Add(float64(len(b)))
	return b, in, err
}

func (s *countedStore) Put(ctx context.Context, key string, data []byte, opts objstore.PutOptions) (objstore.Info, error) {
	in, err := s.inner.Put(ctx, key, data, opts)
	s.count("put", err)
	if err == nil {
		s.written.Add(float64(len(data)))
	}
	return in, err
}

func (s *countedStore) Delete(ctx context.Context, key string) error {
	err := s.inner.Delete(ctx, key)
	s.count("delete", err)
	return err
}

func (s *countedStore) List(ctx context.Context, prefix string, fn func(objstore.Info) error) error {
	err := s.inner.List(ctx, prefix, fn)
	s.count("list", err)
	return err
}

func (s *countedStore) Head(ctx context.Context, key string) (objstore.Info, error) {
	in, err := s.inner.Head(ctx, key)
	s.count("head", err)
	return in, err
}
