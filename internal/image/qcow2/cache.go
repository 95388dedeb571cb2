package qcow2

import "container/list"

// table is one cached metadata cluster (an L2 table or a refcount block).
type table struct {
	off   int64 // host offset of the cluster
	b     []byte
	dirty bool
	elem  *list.Element
}

// cache is an LRU of metadata clusters. It is not safe for concurrent use:
// Image.mu guards it. It never writes anything itself; the Image writes a
// dirty victim back before dropping it.
type cache struct {
	max int
	m   map[int64]*table
	lru list.List // front = most recently used; values are *table
}

// minCacheTables is the fewest tables a cache holds.
const minCacheTables = 4

func newCache(n int) *cache {
	return &cache{max: max(n, minCacheTables), m: make(map[int64]*table)}
}

// get returns the cached table at off, marking it recently used.
func (c *cache) get(off int64) *table {
	t := c.m[off]
	if t != nil {
		c.lru.MoveToFront(t.elem)
	}
	return t
}

// victim returns the least recently used table when the cache is full.
func (c *cache) victim() *table {
	if len(c.m) < c.max {
		return nil
	}
	return c.lru.Back().Value.(*table)
}

// add inserts t (the caller made room with victim/remove).
func (c *cache) add(t *table) {
	t.elem = c.lru.PushFront(t)
	c.m[t.off] = t
}

// remove drops t.
func (c *cache) remove(t *table) {
	c.lru.Remove(t.elem)
	delete(c.m, t.off)
}

// dirtyTables returns every dirty table.
func (c *cache) dirtyTables() []*table {
	var out []*table
	for e := c.lru.Front(); e != nil; e = e.Next() {
		if t := e.Value.(*table); t.dirty {
			out = append(out, t)
		}
	}
	return out
}
