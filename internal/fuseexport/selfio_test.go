package fuseexport

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"runtime"
	"sync"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/loop"
)

// TestServerDoesIOOnItsOwnLoopDevice has the process that serves the FUSE
// file write through the page cache of the loop device on top of it, from
// many goroutines at once, on one P, then fsync: the kernel's writeback of
// the loop device must be served by the same process without deadlock.
func TestServerDoesIOOnItsOwnLoopDevice(t *testing.T) {
	requireFUSE(t)
	prev := runtime.GOMAXPROCS(1)
	t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
	const (
		workers = 16
		chunk   = 2 << 20
	)
	dev := blockdev.NewMem(workers * chunk)
	e := mount(t, dev, Options{})
	ld := attachLoop(t, e, loop.Options{DirectIO: true})
	f, err := os.OpenFile(ld.Path, os.O_RDWR, 0) // buffered: the loop device's page cache
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := make([]byte, workers*chunk)
	rand.Read(want)
	var wg sync.WaitGroup
	errs := make([]error, workers)
	for i := range workers {
		wg.Go(func() {
			for off := i * chunk; off < (i+1)*chunk; off += 64 << 10 {
				if _, err := f.WriteAt(want[off:off+64<<10], int64(off)); err != nil {
					errs[i] = err
					return
				}
			}
			errs[i] = f.Sync()
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	if _, err := dev.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("device does not hold what was written through its loop device")
	}
}
