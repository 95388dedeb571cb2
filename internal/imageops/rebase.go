package imageops

import (
	"bytes"
	"context"
	"fmt"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// RebaseOptions say how Rebase runs.
type RebaseOptions struct {
	// Progress, when set, is called with the bytes of the disk done.
	Progress func(n int64)
}

// RebaseStats say what Rebase wrote into the image.
type RebaseStats struct {
	// Data and Zero are the bytes copied in as data and as zeroes.
	Data, Zero int64
}

// BackingSetter is an image that records its backing file's name and
// format in its header (qcow2.Image.SetBacking).
type BackingSetter interface {
	SetBacking(name, format string) error
}

// rebaseChunk is how much of the disk Rebase compares at once.
const rebaseChunk = 1 << 20

// Rebase is the data half of qemu-img rebase in its safe mode: wherever
// top leaves its bytes to its backing chain (opened with it: the old one)
// and the old chain and newBase read differently, it copies the old bytes
// into top, a whole cluster of top at a time (as qemu 8.2 and later do),
// and as zeroes where they are all zeroes. newBase nil stands for no
// backing file (zeroes everywhere); a backing file shorter than top reads
// as zeroes past its end. It flushes top; the caller then records the new
// backing file (BackingSetter). top reads the same bytes all along, so a
// crash at any point leaves it as it was to a reader.
func Rebase(ctx context.Context, top, newBase blockdev.Device, o RebaseOptions) (RebaseStats, error) {
	var st RebaseStats
	old := backingOf(top)
	size := top.Size()
	cs := int64(64 << 10)
	if c, ok := top.(interface{ ClusterSize() int64 }); ok && c.ClusterSize() > 0 {
		cs = c.ClusterSize()
	}
	step := max(rebaseChunk/cs, 1) * cs
	bufOld := make([]byte, step)
	bufNew := make([]byte, step)
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		ls, err := image.LayerStatusOf(top, off, min(step, size-off))
		if err != nil {
			return st, fmt.Errorf("imageops: rebase: block status at %d: %w", off, err)
		}
		if !ls.Allocated {
			if err := rebaseRun(top, old, newBase, off, ls.Len, cs, bufOld, bufNew, &st); err != nil {
				return st, err
			}
		}
		if o.Progress != nil {
			o.Progress(ls.Len)
		}
		off += ls.Len
	}
	if err := top.Flush(); err != nil {
		return st, fmt.Errorf("imageops: rebase: flush: %w", err)
	}
	return st, nil
}

// rebaseRun handles [off, off+n), which top leaves to its backing chain:
// cluster by cluster, where old and newBase differ, the old bytes go into
// top (clipped to the run, so that top's own subclusters stay).
func rebaseRun(top, old, newBase blockdev.Device, off, n, cs int64, bufOld, bufNew []byte, st *RebaseStats) error {
	for end := off + n; off < end; {
		// Compare whole clusters: from the cluster that holds off, up to
		// the cluster boundary after end (or a buffer's worth).
		start := off / cs * cs
		stop := min(start+int64(len(bufOld)), (end+cs-1)/cs*cs, top.Size())
		bo, bn := bufOld[:stop-start], bufNew[:stop-start]
		if err := readOrZero(old, bo, start); err != nil {
			return err
		}
		if err := readOrZero(newBase, bn, start); err != nil {
			return err
		}
		for c := start; c < stop; c += cs {
			ce := min(c+cs, stop)
			o, w := bo[c-start:ce-start], bn[c-start:ce-start]
			if bytes.Equal(o, w) {
				continue
			}
			ws, we := max(c, off), min(ce, end)
			part := o[ws-c : we-c]
			var err error
			if blockdev.IsZero(part) {
				err = blockdev.WriteZeroes(top, ws, we-ws, false)
				st.Zero += we - ws
			} else {
				_, err = top.WriteAt(part, ws)
				st.Data += we - ws
			}
			if err != nil {
				return fmt.Errorf("imageops: rebase: write at %d: %w", ws, err)
			}
		}
		off = min(stop, end)
	}
	return nil
}

// readOrZero reads buf at off from dev, zeroes past its end or without
// one.
func readOrZero(dev blockdev.Device, buf []byte, off int64) error {
	clear(buf)
	if dev == nil || off >= dev.Size() {
		return nil
	}
	n := min(int64(len(buf)), dev.Size()-off)
	if _, err := dev.ReadAt(buf[:n], off); err != nil {
		return fmt.Errorf("imageops: rebase: read %d bytes at %d: %w", n, off, err)
	}
	return nil
}
