package cli

import (
	"github.com/spf13/pflag"

	"vdisk/internal/blockdev"
)

// cacheFlags are --cache and --aio, with qemu-nbd's names and meanings.
type cacheFlags struct{ cache, aio string }

// cacheHelp and aioHelp describe the flags (serve and open share them).
const (
	cacheHelp = "host page cache use, as qemu-nbd's: writeback (page cache; a flush is fdatasync), none (O_DIRECT; a flush is fdatasync), directsync (O_DIRECT, every write durable when done), unsafe (page cache; flushes ignored)"
	aioHelp   = "how image files are read and written: threads (blocking calls) or io_uring (batched through one io_uring per file)"
)

func (c *cacheFlags) add(f *pflag.FlagSet) {
	f.StringVar(&c.cache, "cache", "writeback", cacheHelp)
	f.StringVar(&c.aio, "aio", "threads", aioHelp)
}

// modes parses the flags.
func (c cacheFlags) modes() (blockdev.CacheMode, blockdev.AIOMode, error) {
	m, err := blockdev.ParseCacheMode(c.cache)
	if err != nil {
		return 0, 0, err
	}
	a, err := blockdev.ParseAIOMode(c.aio)
	if err != nil {
		return 0, 0, err
	}
	return m, a, nil
}

// directMinBlock is the minimum block size an export over dev advertises:
// with the page cache bypassed, requests of whole logical blocks go to the
// file without a bounce buffer (others still work, bounced).
func directMinBlock(c cacheFlags, dev blockdev.Device) uint32 {
	if m, _, err := c.modes(); err != nil || !m.Direct() {
		return 0
	}
	return blockdev.InfoOf(dev).LogicalBlockSize
}
