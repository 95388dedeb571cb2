package objstore

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// Mem is an object store in memory, for tests. It is safe for concurrent
// use: one mutex guards the map, and data is copied in and out under it.
type Mem struct {
	mu      sync.Mutex
	objects map[string]memObject
}

type memObject struct {
	data    []byte
	etag    string
	modTime time.Time
}

var _ Store = (*Mem)(nil)

// NewMem returns an empty in-memory store.
func NewMem() *Mem { return &Mem{objects: make(map[string]memObject)} }

func (o memObject) info(key string) Info {
	return Info{Key: key, Size: int64(len(o.data)), ETag: o.etag, ModTime: o.modTime}
}

// Get implements Store.
func (m *Mem) Get(ctx context.Context, key string, off, n int64) ([]byte, Info, error) {
	if err := ctx.Err(); err != nil {
		return nil, Info{}, err
	}
	if off < 0 {
		return nil, Info{}, fmt.Errorf("objstore: get %s: negative offset %d", key, off)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	o, ok := m.objects[key]
	if !ok {
		return nil, Info{}, fmt.Errorf("objstore: get %s: %w", key, ErrNotFound)
	}
	size := int64(len(o.data))
	if off >= size {
		return []byte{}, o.info(key), nil
	}
	end := size
	if n >= 0 && n < size-off {
		end = off + n
	}
	return slices.Clone(o.data[off:end]), o.info(key), nil
}

// Put implements Store.
func (m *Mem) Put(ctx context.Context, key string, data []byte, opts PutOptions) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	if opts.IfNoneMatch && opts.IfMatch != "" {
		return Info{}, fmt.Errorf("objstore: put %s: %w", key, ErrInvalidOptions)
	}
	sum := md5.Sum(data)
	o := memObject{data: slices.Clone(data), etag: `"` + hex.EncodeToString(sum[:]) + `"`, modTime: time.Now()}
	m.mu.Lock()
	defer m.mu.Unlock()
	old, exists := m.objects[key]
	switch {
	case opts.IfNoneMatch && exists:
		return Info{}, fmt.Errorf("objstore: put %s: %w", key, ErrPreconditionFailed)
	case opts.IfMatch != "" && !exists:
		return Info{}, fmt.Errorf("objstore: put %s: %w", key, ErrNotFound)
	case opts.IfMatch != "" && opts.IfMatch != old.etag:
		return Info{}, fmt.Errorf("objstore: put %s: %w", key, ErrPreconditionFailed)
	}
	m.objects[key] = o
	return o.info(key), nil
}

// Delete implements Store.
func (m *Mem) Delete(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.objects, key)
	return nil
}

// List implements Store. fn is called without the lock held.
func (m *Mem) List(ctx context.Context, prefix string, fn func(Info) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	var infos []Info
	for k, o := range m.objects {
		if strings.HasPrefix(k, prefix) {
			infos = append(infos, o.info(k))
		}
	}
	m.mu.Unlock()
	slices.SortFunc(infos, func(a, b Info) int { return strings.Compare(a.Key, b.Key) })
	for _, in := range infos {
		if err := fn(in); err != nil {
			return err
		}
	}
	return nil
}

// Head implements Store.
func (m *Mem) Head(ctx context.Context, key string) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	o, ok := m.objects[key]
	if !ok {
		return Info{}, fmt.Errorf("objstore: head %s: %w", key, ErrNotFound)
	}
	return o.info(key), nil
}
