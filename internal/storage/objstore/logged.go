package objstore

import (
	"context"
	"log/slog"
	"time"
)

// Logged is a Store decorator that logs every request at Debug level (and
// failed ones at Warn) with its key, size, duration and error. It is as safe
// for concurrent use as the store it wraps.
type Logged struct {
	inner Store
	log   *slog.Logger
}

var _ Store = (*Logged)(nil)

// NewLogged wraps inner, logging to log.
func NewLogged(inner Store, log *slog.Logger) *Logged { return &Logged{inner: inner, log: log} }

func (l *Logged) done(ctx context.Context, op, key string, start time.Time, bytes int64, err error) {
	level := slog.LevelDebug
	if err != nil {
		level = slog.LevelWarn
	}
	if !l.log.Enabled(ctx, level) {
		return
	}
	l.log.Log(ctx, level, "objstore "+op, "key", key, "bytes", bytes, "took", time.Since(start), "err", err)
}

// Get implements Store.
func (l *Logged) Get(ctx context.Context, key string, off, n int64) ([]byte, Info, error) {
	start := time.Now()
	b, in, err := l.inner.Get(ctx, key, off, n)
	l.done(ctx, "get", key, start, int64(len(b)), err)
	return b, in, err
}

// Put implements Store.
func (l *Logged) Put(ctx context.Context, key string, data []byte, opts PutOptions) (Info, error) {
	start := time.Now()
	in, err := l.inner.Put(ctx, key, data, opts)
	l.done(ctx, "put", key, start, int64(len(data)), err)
	return in, err
}

// Delete implements Store.
func (l *Logged) Delete(ctx context.Context, key string) error {
	start := time.Now()
	err := l.inner.Delete(ctx, key)
	l.done(ctx, "delete", key, start, 0, err)
	return err
}

// List implements Store.
func (l *Logged) List(ctx context.Context, prefix string, fn func(Info) error) error {
	start := time.Now()
	err := l.inner.List(ctx, prefix, fn)
	l.done(ctx, "list", prefix, start, 0, err)
	return err
}

// Head implements Store.
func (l *Logged) Head(ctx context.Context, key string) (Info, error) {
	start := time.Now()
	in, err := l.inner.Head(ctx, key)
	l.done(ctx, "head", key, start, in.Size, err)
	return in, err
}
