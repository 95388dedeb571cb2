package kernel

import (
	"fmt"
	"math/bits"
	"os"
	"time"
)

// Flags are NBD transmission flags (the 16 bits an NBD server sends in its
// handshake); pass the server's own to Connect so the kernel uses exactly
// what the server supports.
type Flags uint16

// Transmission flags the kernel client acts on (NBD_FLAG_* in linux/nbd.h).
const (
	FlagHasFlags    Flags = 1 << 0 // NBD_FLAG_HAS_FLAGS
	FlagReadOnly    Flags = 1 << 1 // NBD_FLAG_READ_ONLY: the device is read-only
	FlagFlush       Flags = 1 << 2 // NBD_FLAG_SEND_FLUSH: the kernel sends flushes
	FlagFUA         Flags = 1 << 3 // NBD_FLAG_SEND_FUA: the kernel sends FUA writes
	FlagTrim        Flags = 1 << 5 // NBD_FLAG_SEND_TRIM: the kernel sends discards
	FlagWriteZeroes Flags = 1 << 6 // NBD_FLAG_SEND_WRITE_ZEROES (newer kernels)
	FlagMultiConn   Flags = 1 << 8 // NBD_FLAG_CAN_MULTI_CONN: several sockets per device
)

// Bounds of Config.
const (
	// MaxSockets is the most connections Connect gives one device.
	MaxSockets = 16
	// DefaultBlockSize is the block size when Config.BlockSize is zero.
	DefaultBlockSize = 512
	// readyWait bounds the wait for an ioctl-configured device to start.
	readyWait = 30 * time.Second
)

// Config describes the device Connect sets up.
type Config struct {
	// Index is N of /dev/nbdN, or -1 to let the kernel choose a free one.
	Index int
	// Size is the device size in bytes, a positive multiple of BlockSize.
	Size int64
	// BlockSize is the logical block size: a power of two from 512 to the
	// page size. Zero means DefaultBlockSize.
	BlockSize int64
	// Flags are the server's transmission flags. Several sockets need
	// FlagMultiConn.
	Flags Flags
	// Timeout is how long a request may wait for its reply before the
	// kernel gives up on the connection; zero keeps the kernel's default.
	// It is rounded up to whole seconds.
	Timeout time.Duration
	// DeadConnTimeout is how long I/O waits for Reconfigure once every
	// connection is dead, instead of failing at once; zero fails at once.
	// Rounded up to whole seconds. Netlink only.
	DeadConnTimeout time.Duration
	// Backend names the backing store (NBD_ATTR_BACKEND_IDENTIFIER, shown
	// in /sys/block/nbdN/backend); empty sets none. Netlink only.
	Backend string
}

// Validate checks c and fills in defaults.
func (c *Config) Validate(socks []*os.File) error {
	if c.BlockSize == 0 {
		c.BlockSize = DefaultBlockSize
	}
	page := int64(os.Getpagesize())
	switch {
	case len(socks) == 0 || len(socks) > MaxSockets:
		return fmt.Errorf("nbd: %d sockets, want 1 to %d", len(socks), MaxSockets)
	case len(socks) > 1 && c.Flags&FlagMultiConn == 0:
		return fmt.Errorf("nbd: %d sockets, but the server does not allow multiple connections", len(socks))
	case c.Index < -1:
		return fmt.Errorf("nbd: bad device index %d", c.Index)
	case c.BlockSize < 512 || c.BlockSize > page || bits.OnesCount64(uint64(c.BlockSize)) != 1:
		return fmt.Errorf("nbd: block size %d is not a power of two from 512 to %d", c.BlockSize, page)
	case c.Size <= 0 || c.Size%c.BlockSize != 0:
		return fmt.Errorf("nbd: size %d is not a positive multiple of the block size %d", c.Size, c.BlockSize)
	case c.Timeout < 0 || c.DeadConnTimeout < 0:
		return fmt.Errorf("nbd: negative timeout")
	}
	for i, s := range socks {
		if s == nil {
			return fmt.Errorf("nbd: socket %d is nil", i)
		}
	}
	return nil
}

// seconds rounds d up to whole seconds.
func seconds(d time.Duration) uint64 { return uint64((d + time.Second - 1) / time.Second) }

// Path is the device node of index: /dev/nbdN.
func Path(index int) string { return fmt.Sprintf("/dev/nbd%d", index) }
