package objstoretest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"vdisk/internal/storage/objstore"
)

// Op names a Store method for Faulty.
type Op string

// The operations Faulty can fail.
const (
	OpGet    Op = "get"
	OpPut    Op = "put"
	OpDelete Op = "delete"
	OpList   Op = "list"
	OpHead   Op = "head"
)

// ErrInjected is the error Faulty returns for an injected fault: a stand-in
// for a 5xx answer or a broken connection that outlived the store's retries.
var ErrInjected = errors.New("injected object store fault")

// Fault decides what happens to one request: nil lets it through;
// ErrHang makes it block until its context is done (a timeout); any other
// error is returned without reaching the inner store.
type Fault func(op Op, key string) error

// ErrHang, returned by a Fault, makes the request hang until its context
// is done.
var ErrHang = errors.New("hang until the context is done")

// Faulty is a Store decorator that fails requests as its Fault says. It is
// safe for concurrent use; SetFault may be called at any time.
type Faulty struct {
	inner objstore.Store

	mu    sync.Mutex
	fault Fault
}

var _ objstore.Store = (*Faulty)(nil)

// NewFaulty wraps inner with no fault set.
func NewFaulty(inner objstore.Store) *Faulty { return &Faulty{inner: inner} }

// SetFault replaces the fault (nil: no faults).
func (f *Faulty) SetFault(fault Fault) {
	f.mu.Lock()
	f.fault = fault
	f.mu.Unlock()
}

// FailAll is a Fault that fails every request of the given ops (all ops
// when none are given) with ErrInjected.
func FailAll(ops ...Op) Fault {
	return func(op Op, _ string) error {
		if len(ops) == 0 {
			return ErrInjected
		}
		for _, o := range ops {
			if o == op {
				return ErrInjected
			}
		}
		return nil
	}
}

// FailKeys is a Fault that fails requests for keys containing substr.
func FailKeys(substr string) Fault {
	return func(_ Op, key string) error {
		if strings.Contains(key, substr) {
			return ErrInjected
		}
		return nil
	}
}

func (f *Faulty) check(ctx context.Context, op Op, key string) error {
	f.mu.Lock()
	fault := f.fault
	f.mu.Unlock()
	if fault == nil {
		return nil
	}
	err := fault(op, key)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrHang):
		<-ctx.Done()
		return fmt.Errorf("objstoretest: %s %s: %w", op, key, ctx.Err())
	default:
		return fmt.Errorf("objstoretest: %s %s: %w", op, key, err)
	}
}

// Get implements objstore.Store.
func (f *Faulty) Get(ctx context.Context, key string, off, n int64) ([]byte, objstore.Info, error) {
	if err := f.check(ctx, OpGet, key); err != nil {
		return nil, objstore.Info{}, err
	}
	return f.inner.Get(ctx, key, off, n)
}

// Put implements objstore.Store.
func (f *Faulty) Put(ctx context.Context, key string, data []byte, opts objstore.PutOptions) (objstore.Info, error) {
	if err := f.check(ctx, OpPut, key); err != nil {
		return objstore.Info{}, err
	}
	return f.inner.Put(ctx, key, data, opts)
}

// Delete implements objstore.Store.
func (f *Faulty) Delete(ctx context.Context, key string) error {
	if err := f.check(ctx, OpDelete, key); err != nil {
		return err
	}
	return f.inner.Delete(ctx, key)
}

// List implements objstore.Store.
func (f *Faulty) List(ctx context.Context, prefix string, fn func(objstore.Info) error) error {
	if err := f.check(ctx, OpList, prefix); err != nil {
		return err
	}
	return f.inner.List(ctx, prefix, fn)
}

// Head implements objstore.Store.
func (f *Faulty) Head(ctx context.Context, key string) (objstore.Info, error) {
	if err := f.check(ctx, OpHead, key); err != nil {
		return objstore.Info{}, err
	}
	return f.inner.Head(ctx, key)
}
