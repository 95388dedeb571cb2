package objstore

import (
	"context"
	"sync/atomic"
)

// Counts are the requests a Counter has seen and the payload bytes moved.
type Counts struct {
	Get, Put, Delete, List, Head int64
	// BytesRead is the payload returned by Get; BytesWritten the payload
	// sent by Put.
	BytesRead, BytesWritten int64
	// Errors counts requests that returned an error.
	Errors int64
}

// Requests is the total number of requests.
func (c Counts) Requests() int64 { return c.Get + c.Put + c.Delete + c.List + c.Head }

// Sub returns c minus o, the requests between two snapshots.
func (c Counts) Sub(o Counts) Counts {
	return Counts{
		Get: c.Get - o.Get, Put: c.Put - o.Put, Delete: c.Delete - o.Delete,
		List: c.List - o.List, Head: c.Head - o.Head,
		BytesRead: c.BytesRead - o.BytesRead, BytesWritten: c.BytesWritten - o.BytesWritten,
		Errors: c.Errors - o.Errors,
	}
}

// Counter is a Store decorator that counts requests and bytes. It is safe
// for concurrent use; the counts are atomics. A List counts as one request
// however many pages the store needs.
type Counter struct {
	inner Store

	get, put, del, list, head atomic.Int64
	bytesRead, bytesWritten   atomic.Int64
	errors                    atomic.Int64
}

var _ Store = (*Counter)(nil)

// NewCounter wraps inner.
func NewCounter(inner Store) *Counter { return &Counter{inner: inner} }

// Counts returns a snapshot of the counts.
func (c *Counter) Counts() Counts {
	return Counts{
		Get: c.get.Load(), Put: c.put.Load(), Delete: c.del.Load(), List: c.list.Load(), Head: c.head.Load(),
		BytesRead: c.bytesRead.Load(), BytesWritten: c.bytesWritten.Load(), Errors: c.errors.Load(),
	}
}

func (c *Counter) count(err error) {
	if err != nil {
		c.errors.Add(1)
	}
}

// Get implements Store.
func (c *Counter) Get(ctx context.Context, key string, off, n int64) ([]byte, Info, error) {
	c.get.Add(1)
	b, in, err := c.inner.Get(ctx, key, off, n)
	c.bytesRead.Add(int64(len(b)))
	c.count(err)
	return b, in, err
}

// Put implements Store.
func (c *Counter) Put(ctx context.Context, key string, data []byte, opts PutOptions) (Info, error) {
	c.put.Add(1)
	c.bytesWritten.Add(int64(len(data)))
	in, err := c.inner.Put(ctx, key, data, opts)
	c.count(err)
	return in, err
}

// Delete implements Store.
func (c *Counter) Delete(ctx context.Context, key string) error {
	c.del.Add(1)
	err := c.inner.Delete(ctx, key)
	c.count(err)
	return err
}

// List implements Store.
func (c *Counter) List(ctx context.Context, prefix string, fn func(Info) error) error {
	c.list.Add(1)
	err := c.inner.List(ctx, prefix, fn)
	c.count(err)
	return err
}

// Head implements Store.
func (c *Counter) Head(ctx context.Context, key string) (Info, error) {
	c.head.Add(1)
	in, err := c.inner.Head(ctx, key)
	c.count(err)
	return in, err
}
