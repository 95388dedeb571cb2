package blockdev

import (
	"fmt"
	"unsafe"
)

// CacheMode says how a File uses the host's page cache and what Flush does,
// with the meanings of qemu's -drive cache= and qemu-nbd --cache.
type CacheMode uint8

const (
	// CacheWriteback reads and writes through the page cache; Flush is
	// fdatasync. The zero value.
	CacheWriteback CacheMode = iota
	// CacheNone bypasses the page cache (O_DIRECT); Flush is fdatasync,
	// which makes the device's volatile write cache durable.
	CacheNone
	// CacheDirectSync bypasses the page cache and makes every write
	// durable before it completes (O_DIRECT|O_DSYNC).
	CacheDirectSync
	// CacheUnsafe is CacheWriteback with Flush a no-op: fast, and a host
	// crash may lose or tear anything written.
	CacheUnsafe
)

var cacheNames = [...]string{
	CacheWriteback:  "writeback",
	CacheNone:       "none",
	CacheDirectSync: "directsync",
	CacheUnsafe:     "unsafe",
}

// CacheModes are the names ParseCacheMode accepts, for help texts.
const CacheModes = "writeback, none, directsync, unsafe"

// ParseCacheMode parses a cache mode by its name; "" is writeback.
func ParseCacheMode(s string) (CacheMode, error) {
	if s == "" {
		return CacheWriteback, nil
	}
	for m, n := range cacheNames {
		if n == s {
			return CacheMode(m), nil
		}
	}
	return 0, fmt.Errorf("unknown cache mode %q (want one of %s)", s, CacheModes)
}

// String is the mode's name, as ParseCacheMode takes it.
func (m CacheMode) String() string {
	if int(m) < len(cacheNames) {
		return cacheNames[m]
	}
	return fmt.Sprintf("CacheMode(%d)", uint8(m))
}

// Direct reports whether the mode bypasses the page cache (O_DIRECT).
func (m CacheMode) Direct() bool { return m == CacheNone || m == CacheDirectSync }

// AIOMode says how a File issues its reads, writes and flushes.
type AIOMode uint8

const (
	// AIOThreads makes each call a blocking system call on the caller's
	// goroutine (its thread while it blocks). The zero value.
	AIOThreads AIOMode = iota
	// AIOIOUring submits the calls of all goroutines through one shared
	// io_uring, batched.
	AIOIOUring
)

var aioNames = [...]string{AIOThreads: "threads", AIOIOUring: "io_uring"}

// AIOModes are the names ParseAIOMode accepts, for help texts.
const AIOModes = "threads, io_uring"

// ParseAIOMode parses an I/O mode by its name; "" is threads.
func ParseAIOMode(s string) (AIOMode, error) {
	if s == "" {
		return AIOThreads, nil
	}
	for m, n := range aioNames {
		if n == s {
			return AIOMode(m), nil
		}
	}
	return 0, fmt.Errorf("unknown aio mode %q (want one of %s)", s, AIOModes)
}

// String is the mode's name, as ParseAIOMode takes it.
func (m AIOMode) String() string {
	if int(m) < len(aioNames) {
		return aioNames[m]
	}
	return fmt.Sprintf("AIOMode(%d)", uint8(m))
}

// AlignedBuffer returns a zeroed buffer of n bytes whose first byte's
// address is a multiple of align (a power of two), as O_DIRECT wants of
// the memory it transfers to. Go allocates large power-of-two sizes
// page-aligned already; otherwise a larger allocation is cut to fit.
func AlignedBuffer(n, align int) []byte {
	if align <= 1 {
		return make([]byte, n)
	}
	b := make([]byte, n)
	if n == 0 || isAligned(b, align) {
		return b
	}
	b = make([]byte, n+align-1)
	skip := (align - int(uintptr(unsafe.Pointer(&b[0])))&(align-1)) & (align - 1)
	return b[skip : skip+n : skip+n]
}

// isAligned reports whether b's first byte is at a multiple of align.
func isAligned(b []byte, align int) bool {
	return len(b) == 0 || uintptr(unsafe.Pointer(&b[0]))&uintptr(align-1) == 0
}
