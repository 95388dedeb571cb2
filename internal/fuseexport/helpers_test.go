package fuseexport

import (
	"errors"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"vdisk/internal/blockdev"
)

// serveWait bounds how long a test waits for an export to stop serving.
const serveWait = 30 * time.Second

// requireFUSE skips the test unless it runs as root with /dev/fuse.
func requireFUSE(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting FUSE needs root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("no FUSE in this kernel: %v", err)
	}
}

// mount exports dev under a fresh directory and unmounts it when the test
// ends, forcibly if it must.
func mount(t *testing.T, dev blockdev.Device, opt Options) *Export {
	t.Helper()
	e, err := Mount(t.TempDir(), dev, opt)
	if err != nil {
		t.Fatalf("Mount: %v", err)
	}
	t.Cleanup(func() { cleanupExport(t, e) })
	return e
}

// cleanupExport unmounts e if it is still mounted and waits for it to stop
// serving.
func cleanupExport(t *testing.T, e *Export) {
	err := e.Close()
	if errors.Is(err, ErrBusy) {
		t.Logf("cleanup: %v; unmounting lazily", err)
		err = e.CloseForce()
	}
	if err != nil && !errors.Is(err, ErrClosed) {
		t.Errorf("cleanup: %v", err)
	}
	select {
	case <-e.Done():
	case <-time.After(serveWait):
		t.Errorf("export %s still serving %v after unmount", e.Dir(), serveWait)
	}
}

// counting is a Device decorator that counts Flush, Trim and WriteZeroes
// calls, for tests that check a kernel operation reached the device.
type counting struct {
	*blockdev.Mem
	flushes, trims, zeroes atomic.Int64
	lastZeroTrim           atomic.Bool // mayTrim of the last WriteZeroes
}

var (
	_ blockdev.Trimmer    = (*counting)(nil)
	_ blockdev.ZeroWriter = (*counting)(nil)
	_ blockdev.Extenter   = (*counting)(nil)
)

func newCounting(size int64) *counting { return &counting{Mem: blockdev.NewMem(size)} }

func (c *counting) Flush() error {
	c.flushes.Add(1)
	return c.Mem.Flush()
}

func (c *counting) Trim(off, n int64) error {
	c.trims.Add(1)
	return c.Mem.Trim(off, n)
}

func (c *counting) WriteZeroes(off, n int64, mayTrim bool) error {
	c.zeroes.Add(1)
	c.lastZeroTrim.Store(mayTrim)
	return c.Mem.WriteZeroes(off, n, mayTrim)
}

// plain hides every optional capability of a Device.
type plain struct{ blockdev.Device }
