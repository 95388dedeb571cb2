package imageops

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// CommitOptions say how Commit runs.
type CommitOptions struct {
	// Drop leaves the top image as it is (qemu-img commit -d); otherwise
	// it is emptied once the base holds its data.
	Drop bool
	// Workers is the number of copies in flight (0: DefaultWorkers).
	Workers int
	// Progress, when set, is called with the bytes of the disk done (one
	// call at a time).
	Progress func(n int64)
}

// DefaultWorkers is the number of copies in flight when CommitOptions
// leaves Workers zero.
const DefaultWorkers = 4

// CommitStats say what Commit copied.
type CommitStats struct {
	// Data and Zero are the bytes written into the base as data and as
	// zeroes.
	Data, Zero int64
	// Emptied says the top image was emptied.
	Emptied bool
}

// Emptier is an image that can drop all of its own clusters so that it
// reads from its backing file again (qcow2.Image.MakeEmpty).
type Emptier interface {
	MakeEmpty() error
}

// chunk is the most Commit copies in one request.
const chunk = 2 << 20

// Commit copies into base, a layer of top's backing chain opened
// read-write, every run of top that a layer above base holds
// (image.AllocatedAbove, qemu's bdrv_is_allocated_above): data as data,
// zero clusters as zeroes (blockdev.WriteZeroes, keeping the base's
// storage: no cluster is freed, or punched one at a time). It grows base first if
// it is smaller than top. Then it flushes base and, unless o.Drop, empties
// top (an Emptier; a top that is not one is left as it is, as qemu-img
// does), so that top reads through to base again.
//
// Nothing is read from base or from the layers below it, and top is
// changed only after base is flushed: a crash at any point leaves top and
// the layers between as they were (reading what they read before), and
// base as its format leaves an interrupted series of writes (qcow2:
// consistent, every cluster old or new, at worst leaked clusters).
func Commit(ctx context.Context, top, base blockdev.Device, o CommitOptions) (CommitStats, error) {
	var st CommitStats
	if !inChain(top, base) {
		return st, errors.New("imageops: commit: the base is not below the top image")
	}
	size := top.Size()
	if base.Size() < size {
		r, ok := base.(blockdev.Resizer)
		if !ok {
			return st, fmt.Errorf("imageops: commit: the base (%d bytes) is smaller than the top image (%d bytes) and cannot be resized", base.Size(), size)
		}
		if err := r.Resize(size); err != nil {
			return st, fmt.Errorf("imageops: commit: grow the base: %w", err)
		}
	}
	workers := o.Workers
	if workers <= 0 {
		workers = DefaultWorkers
	}
	type job struct {
		off, n int64
		zero   bool
	}
	jobs := make(chan job, workers)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
		data     atomic.Int64
		zero     atomic.Int64
	)
	var progressMu sync.Mutex
	progress := func(n int64) {
		if o.Progress != nil {
			progressMu.Lock()
			o.Progress(n)
			progressMu.Unlock()
		}
	}
	fail := func(err error) {
		errOnce.Do(func() { firstErr = err; cancel() })
	}
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, chunk)
			for j := range jobs {
				if ctx.Err() != nil {
					continue
				}
				var err error
				if j.zero {
					err = blockdev.WriteZeroes(base, j.off, j.n, false)
					zero.Add(j.n)
				} else {
					err = copyRun(top, base, buf[:j.n], j.off)
					data.Add(j.n)
				}
				if err != nil {
					fail(err)
					continue
				}
				progress(j.n)
			}
		}()
	}
	walkErr := func() error {
		for off := int64(0); off < size; {
			if err := ctx.Err(); err != nil {
				return err
			}
			alloc, n, err := image.AllocatedAbove(top, base, off, min(chunk, size-off))
			if err != nil {
				return fmt.Errorf("imageops: commit: block status at %d: %w", off, err)
			}
			isZero := false
			if alloc {
				e, err := image.StatusAt(top, off, n)
				if err != nil {
					return fmt.Errorf("imageops: commit: block status at %d: %w", off, err)
				}
				n, isZero = e.Length, e.Zero && !e.Data
				select {
				case jobs <- job{off, n, isZero}:
				case <-ctx.Done():
					return ctx.Err()
				}
			} else {
				progress(n)
			}
			off += n
		}
		return nil
	}()
	close(jobs)
	wg.Wait()
	if firstErr != nil {
		return st, firstErr
	}
	if walkErr != nil {
		return st, walkErr
	}
	st.Data, st.Zero = data.Load(), zero.Load()
	if err := base.Flush(); err != nil {
		return st, fmt.Errorf("imageops: commit: flush the base: %w", err)
	}
	if o.Drop {
		return st, nil
	}
	if e, ok := top.(Emptier); ok {
		if err := e.MakeEmpty(); err != nil {
			return st, fmt.Errorf("imageops: commit: empty the top image: %w", err)
		}
		st.Emptied = true
		if err := top.Flush(); err != nil {
			return st, err
		}
	}
	return st, nil
}

// copyRun copies len(buf) bytes at off from src to dst.
func copyRun(src, dst blockdev.Device, buf []byte, off int64) error {
	if _, err := src.ReadAt(buf, off); err != nil {
		return fmt.Errorf("imageops: read %d bytes at %d: %w", len(buf), off, err)
	}
	if _, err := dst.WriteAt(buf, off); err != nil {
		return fmt.Errorf("imageops: write %d bytes at %d: %w", len(buf), off, err)
	}
	return nil
}

// inChain reports whether base is a layer of top's backing chain below
// top.
func inChain(top, base blockdev.Device) bool {
	for d := backingOf(top); d != nil; d = backingOf(d) {
		if d == base {
			return true
		}
	}
	return false
}

// backingOf is dev's backing image, nil without one.
func backingOf(dev blockdev.Device) blockdev.Device {
	if l, ok := dev.(image.Layer); ok {
		return l.BackingDevice()
	}
	return nil
}
