package chunked

import (
	"container/list"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultCacheDirSize caps a cache directory's bytes per image.
const DefaultCacheDirSize = 1 << 30

// diskTagLen is the length of the ETag digest in a cache file's name.
const diskTagLen = 16

// diskCache keeps clean chunk objects in files <dir>/<16 hex>.<digest of
// the object's ETag>, so that a reopened image reads them locally instead
// of from the store. An entry is valid only while its chunk's object has
// that ETag: Open lists the ETags and prunes the rest, and the Device
// replaces an entry whenever it stores a chunk. Files are written to a
// temporary name and renamed, so a reader sees a whole file or none. The
// cache is advisory: any of its I/O errors turns into a miss.
//
// It is safe for concurrent use; mu guards the index, not file I/O.
type diskCache struct {
	dir string
	max int64
	log *slog.Logger

	mu      sync.Mutex
	entries map[int64]*diskEntry
	lru     list.List // *diskEntry, most recently used first
	size    int64
}

type diskEntry struct {
	idx  int64
	tag  string
	size int64
	elem *list.Element
}

func diskTag(etag string) string {
	sum := sha256.Sum256([]byte(etag))
	return hex.EncodeToString(sum[:])[:diskTagLen]
}

func (c *diskCache) path(idx int64, tag string) string {
	return filepath.Join(c.dir, fmt.Sprintf("%016x.%s", idx, tag))
}

// imageCacheDir is the subdirectory of root for one image: images may share
// root.
func imageCacheDir(root, prefix string, m Manifest) string {
	sum := sha256.Sum256(fmt.Appendf(nil, "%s\x00%d\x00%d\x00%s", prefix, m.Size, m.ChunkSize, m.Created.UTC().Format(time.RFC3339Nano)))
	return filepath.Join(root, hex.EncodeToString(sum[:8]))
}

// openDiskCache opens (creating) dir and keeps the entries whose names
// match etags, the ETags of the chunk objects now in the store.
func openDiskCache(dir string, max int64, etags map[int64]string, log *slog.Logger) (*diskCache, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("chunked: cache directory: %w", err)
	}
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("chunked: cache directory: %w", err)
	}
	c := &diskCache{dir: dir, max: max, log: log, entries: make(map[int64]*diskEntry)}
	type found struct {
		e     *diskEntry
		mtime time.Time
	}
	var keep []found
	for _, de := range des {
		name := de.Name()
		idx, tag, ok := parseCacheName(name)
		info, ierr := de.Info()
		if !ok || ierr != nil || !info.Mode().IsRegular() || etags[idx] == "" || diskTag(etags[idx]) != tag || c.entries[idx] != nil {
			os.Remove(filepath.Join(dir, name))
			continue
		}
		e := &diskEntry{idx: idx, tag: tag, size: info.Size()}
		c.entries[idx] = e
		keep = append(keep, found{e, info.ModTime()})
	}
	slices.SortFunc(keep, func(a, b found) int { return b.mtime.Compare(a.mtime) })
	for _, f := range keep {
		f.e.elem = c.lru.PushBack(f.e)
		c.size += f.e.size
	}
	c.mu.Lock()
	c.evictLocked()
	c.mu.Unlock()
	return c, nil
}

// parseCacheName splits "<16 hex>.<tag>".
func parseCacheName(name string) (int64, string, bool) {
	h, tag, ok := strings.Cut(name, ".")
	if !ok || len(h) != chunkKeyLen || len(tag) != diskTagLen {
		return 0, "", false
	}
	v, err := strconv.ParseUint(h, 16, 63)
	if err != nil {
		return 0, "", false
	}
	return int64(v), tag, true
}

func (c *diskCache) evictLocked() {
	for c.size > c.max {
		e := c.lru.Back().Value.(*diskEntry)
		c.dropLocked(e)
	}
}

func (c *diskCache) dropLocked(e *diskEntry) {
	c.lru.Remove(e.elem)
	delete(c.entries, e.idx)
	c.size -= e.size
	os.Remove(c.path(e.idx, e.tag))
}

// get reads [off, off+n) of chunk idx if the cache holds the object with
// this etag.
func (c *diskCache) get(idx int64, etag string, off, n int64) ([]byte, bool) {
	tag := diskTag(etag)
	c.mu.Lock()
	e := c.entries[idx]
	if e == nil || e.tag != tag || off+n > e.size {
		c.mu.Unlock()
		return nil, false
	}
	c.lru.MoveToFront(e.elem)
	c.mu.Unlock()
	f, err := os.Open(c.path(idx, tag))
	if err != nil {
		return nil, false
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil && err != io.EOF {
		c.log.Warn("chunked: cache read failed", "chunk", idx, "err", err)
		return nil, false
	}
	return b, true
}

// put stores data as chunk idx's object with this etag, replacing any
// older version.
func (c *diskCache) put(idx int64, etag string, data []byte) {
	if int64(len(data)) > c.max {
		return
	}
	tag := diskTag(etag)
	f, err := os.CreateTemp(c.dir, "tmp-*")
	if err == nil {
		_, err = f.Write(data)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(f.Name(), c.path(idx, tag))
		}
		if err != nil {
			os.Remove(f.Name())
		}
	}
	if err != nil {
		c.log.Warn("chunked: cache write failed", "chunk", idx, "err", err)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.entries[idx]; old != nil {
		if old.tag == tag {
			c.lru.Remove(old.elem)
			delete(c.entries, idx)
			c.size -= old.size
		} else {
			c.dropLocked(old)
		}
	}
	e := &diskEntry{idx: idx, tag: tag, size: int64(len(data))}
	e.elem = c.lru.PushFront(e)
	c.entries[idx] = e
	c.size += e.size
	c.evictLocked()
}

// remove forgets chunk idx (its object was deleted).
func (c *diskCache) remove(idx int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.entries[idx]; e != nil {
		c.dropLocked(e)
	}
}
