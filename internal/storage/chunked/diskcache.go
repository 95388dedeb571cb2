package chunked

import (
	"container/list"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
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

// castagnoli is the CRC32C table of partial entries' maps.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

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
// Random reads keep what they fetched too, in a partial entry: a sparse
// file <name>.p of the pages fetched and a map <name>.m with a slot of 8
// bytes per page of diskPage bytes (its length, 0 while absent, and its
// CRC32C), written after the page. A page is used only when its CRC
// matches, so a torn write or a crash between the two files is a miss,
// never wrong data. A whole object stored or fetched replaces a partial
// entry.
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
	// partial entries: the length of each page present (0: absent).
	pages []uint32
}

// diskPage is the page size of partial entries; diskSlot the size of a
// page's slot in the map.
const (
	diskPage = maxPageSize
	diskSlot = 8
)

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
// match etags, the ETags of the chunk objects now in the store: whole
// ones, and partial ones (both files) of chunks with no whole one.
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
	var partials []string
	seen := make(map[string]bool)
	for _, de := range des {
		name := de.Name()
		idx, tag, kind, ok := parseCacheName(name)
		info, ierr := de.Info()
		if !ok || ierr != nil || !info.Mode().IsRegular() || etags[idx] == "" || diskTag(etags[idx]) != tag || kind == "" && c.entries[idx] != nil {
			os.Remove(filepath.Join(dir, name))
			continue
		}
		if kind != "" {
			// Either file of a partial entry: both are looked at below,
			// once, and both removed unless both are there.
			base := strings.TrimSuffix(strings.TrimSuffix(name, ".m"), ".p")
			if !seen[base] {
				seen[base] = true
				partials = append(partials, base)
			}
		}
		if kind != "" {
			continue
		}
		e := &diskEntry{idx: idx, tag: tag, size: info.Size()}
		c.entries[idx] = e
		keep = append(keep, found{e, info.ModTime()})
	}
	for _, name := range partials {
		idx, tag, _, _ := parseCacheName(name)
		base := filepath.Join(dir, name)
		m, err := os.ReadFile(base + ".m")
		info, serr := os.Stat(base + ".p")
		if c.entries[idx] != nil || err != nil || serr != nil {
			os.Remove(base + ".m")
			os.Remove(base + ".p")
			continue
		}
		e := &diskEntry{idx: idx, tag: tag, pages: make([]uint32, len(m)/diskSlot)}
		for i := range e.pages {
			e.pages[i] = binary.LittleEndian.Uint32(m[i*diskSlot:])
			if e.pages[i] > diskPage {
				e.pages[i] = 0
			}
			e.size += int64(e.pages[i])
		}
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

// parseCacheName splits "<16 hex>.<tag>", "<16 hex>.<tag>.p" or
// "<16 hex>.<tag>.m"; kind is "", "p" or "m".
func parseCacheName(name string) (idx int64, tag, kind string, ok bool) {
	h, tag, ok := strings.Cut(name, ".")
	if tag, kind, _ = strings.Cut(tag, "."); kind != "" && kind != "p" && kind != "m" {
		ok = false
	}
	if !ok || len(h) != chunkKeyLen || len(tag) != diskTagLen {
		return 0, "", "", false
	}
	v, err := strconv.ParseUint(h, 16, 63)
	if err != nil {
		return 0, "", "", false
	}
	return int64(v), tag, kind, true
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
	if e.pages != nil {
		os.Remove(c.path(e.idx, e.tag) + ".m")
		os.Remove(c.path(e.idx, e.tag) + ".p")
		return
	}
	os.Remove(c.path(e.idx, e.tag))
}

// get reads len(b) bytes at off of chunk idx into b if the cache holds the
// object with this etag.
func (c *diskCache) get(idx int64, etag string, off int64, b []byte) bool {
	n := int64(len(b))
	tag := diskTag(etag)
	c.mu.Lock()
	e := c.entries[idx]
	if e != nil && e.pages != nil && e.tag == tag {
		var want []uint32
		if off%diskPage == 0 && n > 0 {
			want = pagesCovering(e.pages, off, n)
		}
		c.mu.Unlock()
		if want == nil {
			return false
		}
		return c.getPages(idx, tag, off, b, want)
	}
	if e == nil || e.tag != tag || off+n > e.size {
		c.mu.Unlock()
		return false
	}
	c.lru.MoveToFront(e.elem)
	c.mu.Unlock()
	f, err := os.Open(c.path(idx, tag))
	if err != nil {
		return false
	}
	defer f.Close()
	if got, err := f.ReadAt(b, off); got != len(b) {
		c.log.Warn("chunked: cache read failed", "chunk", idx, "err", err)
		return false
	}
	return true
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
		if old.tag == tag && old.pages == nil {
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

// pagesCovering returns the lengths of the pages of [off, off+n) when all
// are present and wholly inside it, else nil.
func pagesCovering(pages []uint32, off, n int64) []uint32 {
	first, last := off/diskPage, (off+n-1)/diskPage
	if last >= int64(len(pages)) {
		return nil
	}
	want := slices.Clone(pages[first : last+1])
	for i, l := range want {
		pg := first + int64(i)
		switch {
		case l == 0:
			return nil
		case pg < last && l != diskPage:
			return nil
		case pg == last && pg*diskPage+int64(l) != off+n:
			return nil
		}
	}
	return want
}

// getPages reads [off, off+n) from a partial entry whose pages from off
// have the lengths want, checking each page's CRC32C.
func (c *diskCache) getPages(idx int64, tag string, off int64, b []byte, want []uint32) bool {
	base := c.path(idx, tag)
	f, err := os.Open(base + ".p")
	if err != nil {
		return false
	}
	defer f.Close()
	mf, err := os.Open(base + ".m")
	if err != nil {
		return false
	}
	defer mf.Close()
	slots := make([]byte, len(want)*diskSlot)
	if _, err := mf.ReadAt(slots, off/diskPage*diskSlot); err != nil {
		return false
	}
	if got, _ := f.ReadAt(b, off); got != len(b) {
		return false
	}
	for i, l := range want {
		s := int64(i) * diskPage
		if binary.LittleEndian.Uint32(slots[i*diskSlot:]) != l ||
			crc32.Checksum(b[s:s+int64(l)], castagnoli) != binary.LittleEndian.Uint32(slots[i*diskSlot+4:]) {
			return false
		}
	}
	c.mu.Lock()
	if e := c.entries[idx]; e != nil && e.tag == tag {
		c.lru.MoveToFront(e.elem)
	}
	c.mu.Unlock()
	return true
}

// putPages keeps data, the pages from off (a page boundary) of chunk idx's
// object with this etag, of npages pages, in a partial entry, unless a
// whole one holds them already.
func (c *diskCache) putPages(idx int64, etag string, npages, off int64, data []byte) {
	if off%diskPage != 0 || len(data) == 0 || int64(len(data)) > c.max {
		return
	}
	tag := diskTag(etag)
	base := c.path(idx, tag)
	c.mu.Lock()
	e := c.entries[idx]
	if e != nil && e.tag == tag && e.pages == nil {
		c.mu.Unlock()
		return
	}
	if e == nil || e.tag != tag {
		if e != nil {
			c.dropLocked(e)
		}
		// Both files are made here, under mu, and only here: a writer
		// below opens them without creating, so an entry dropped
		// meanwhile leaves no file behind.
		err := os.WriteFile(base+".p", nil, 0o600)
		if err == nil {
			err = os.WriteFile(base+".m", nil, 0o600)
		}
		if err != nil {
			os.Remove(base + ".p")
			c.mu.Unlock()
			c.log.Warn("chunked: cache write failed", "chunk", idx, "err", err)
			return
		}
		e = &diskEntry{idx: idx, tag: tag, pages: make([]uint32, npages)}
		e.elem = c.lru.PushFront(e)
		c.entries[idx] = e
	}
	c.mu.Unlock()
	f, err := os.OpenFile(base+".p", os.O_WRONLY, 0)
	if err != nil {
		return
	}
	_, err = f.WriteAt(data, off)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return
	}
	first := off / diskPage
	slots := make([]byte, 0, (int64(len(data))+diskPage-1)/diskPage*diskSlot)
	var lens []uint32
	for s := 0; s < len(data); s += diskPage {
		p := data[s:min(s+diskPage, len(data))]
		slots = binary.LittleEndian.AppendUint32(slots, uint32(len(p)))
		slots = binary.LittleEndian.AppendUint32(slots, crc32.Checksum(p, castagnoli))
		lens = append(lens, uint32(len(p)))
	}
	mf, err := os.OpenFile(base+".m", os.O_WRONLY, 0)
	if err != nil {
		return
	}
	_, err = mf.WriteAt(slots, first*diskSlot)
	if cerr := mf.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries[idx] != e || first+int64(len(lens)) > int64(len(e.pages)) {
		return
	}
	for i, l := range lens {
		c.size += int64(l) - int64(e.pages[first+int64(i)])
		e.size += int64(l) - int64(e.pages[first+int64(i)])
		e.pages[first+int64(i)] = l
	}
	c.lru.MoveToFront(e.elem)
	c.evictLocked()
}
