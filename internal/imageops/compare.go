package imageops

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// compareBuf is the most one comparison reads of each image at once, as
// qemu-img compare reads (its IO_BUF_SIZE): a run of allocated data is
// compared in pieces of this size from the run's start, which decides
// the sector a mismatch is reported at.
const compareBuf = 2 << 20

// sector is the unit qemu-img compare reports a mismatch in: the offset
// it prints is the start of the first sector (from the start of the
// piece compared) whose bytes differ.
const sector = 512

// DefaultCompareWorkers is the number of pieces compared at once when
// CompareOptions leaves Workers zero.
const DefaultCompareWorkers = 4

// CompareOptions say how Compare compares.
type CompareOptions struct {
	// Strict fails on differing sizes and on differing block status
	// (allocation, zero, data, where the bytes are), as qemu-img compare
	// -s does.
	Strict bool
	// Workers bounds the pieces read and compared at once.
	Workers int
	// Progress, when set, is called with the bytes just done (of the
	// larger image's size), from any goroutine.
	Progress func(n int64)
}

// Outcome is how two images compare.
type Outcome int

const (
	// Identical: every byte reads the same (a larger image's extra area
	// reads as zeroes, unless Strict).
	Identical Outcome = iota
	// ContentMismatch: the bytes differ at CompareResult.Offset.
	ContentMismatch
	// SizeMismatch: Strict, and the sizes differ.
	SizeMismatch
	// StatusMismatch: Strict, and the block status differs at Offset.
	StatusMismatch
)

// CompareResult is what Compare found.
type CompareResult struct {
	Outcome Outcome
	// Offset is where the content or status first differs, as qemu-img
	// compare reports it: the start of the first differing sector, counted
	// from the start of the piece that held it (pieces start at block
	// status boundaries, then every 2 MiB).
	Offset int64
	// SizeA and SizeB are the images' sizes; when they differ (and not
	// Strict) the larger one's extra area was checked for zeroes, which
	// qemu-img tells with "Warning: Image size mismatch!".
	SizeA, SizeB int64
}

// Messages returns the lines qemu-img compare prints for r.
func (r CompareResult) Messages() []string {
	var out []string
	switch r.Outcome {
	case SizeMismatch:
		return []string{"Strict mode: Image size mismatch!"}
	case StatusMismatch:
		return []string{fmt.Sprintf("Strict mode: Offset %d block status mismatch!", r.Offset)}
	case ContentMismatch:
		if r.SizeA != r.SizeB && r.Offset >= min(r.SizeA, r.SizeB) {
			out = append(out, "Warning: Image size mismatch!")
		}
		return append(out, fmt.Sprintf("Content mismatch at offset %d!", r.Offset))
	}
	if r.SizeA != r.SizeB {
		out = append(out, "Warning: Image size mismatch!")
	}
	return append(out, "Images are identical.")
}

// StatusError is a failure to learn an image's block status (qemu-img
// compare's exit status 3).
type StatusError struct {
	Name string
	Err  error
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("Sector allocation test failed for %s: %v", e.Name, e.Err)
}
func (e *StatusError) Unwrap() error { return e.Err }

// ReadError is a failure to read an image (qemu-img compare's exit
// status 4).
type ReadError struct {
	Name   string
	Offset int64
	Err    error
}

func (e *ReadError) Error() string {
	return fmt.Sprintf("Error while reading offset %d of %s: %v", e.Offset, e.Name, e.Err)
}
func (e *ReadError) Unwrap() error { return e.Err }

// Image is one opened image to compare: its device (the top of its chain)
// and the name messages call it by.
type Image struct {
	Name   string
	Device blockdev.Device
}

// piece is one unit of comparison: both images' bytes at [off, off+n)
// compared, or one image's (only) checked for zeroes.
type piece struct {
	off, n int64
	only   *Image // nil: compare both
}

// statusKey is the part of a run's status that qemu-img compare -s
// compares.
type statusKey struct {
	present, zero, data, hasOffset, compressed bool
}

func keyOf(e image.MapEntry) statusKey {
	return statusKey{e.Present, e.Zero, e.Data, e.HasOffset, e.Compressed}
}

// Compare compares the disks of a and b as qemu-img compare does: runs
// that read as zeroes in both (by their block status) are skipped, runs
// allocated in both are read and compared, a run allocated in one only
// must read as zeroes there. Pieces are compared in parallel; the result
// is the first difference, in the order qemu-img finds it.
func Compare(ctx context.Context, a, b Image, opt CompareOptions) (CompareResult, error) {
	sa, sb := a.Device.Size(), b.Device.Size()
	res := CompareResult{SizeA: sa, SizeB: sb}
	if opt.Strict && sa != sb {
		res.Outcome = SizeMismatch
		return res, nil
	}
	if opt.Workers <= 0 {
		opt.Workers = DefaultCompareWorkers
	}
	c := &comparer{stop: -1, progress: opt.Progress}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pieces := make(chan piece, opt.Workers)
	var wg sync.WaitGroup
	for range opt.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bufA, bufB := make([]byte, compareBuf), make([]byte, compareBuf)
			for p := range pieces {
				if c.past(p.off) {
					continue
				}
				c.run(a, b, p, bufA, bufB)
				c.done(p.n)
			}
		}()
	}
	err := c.generate(ctx, a, b, opt.Strict, pieces)
	close(pieces)
	wg.Wait()
	if err != nil {
		return res, err
	}
	if c.stop < 0 {
		return res, nil
	}
	if c.err != nil {
		return res, c.err
	}
	res.Outcome, res.Offset = c.outcome, c.stop
	return res, nil
}

// comparer gathers what the workers find: the first difference or error
// by offset. Pieces that start past it need no work.
type comparer struct {
	mu       sync.Mutex
	stop     int64 // offset of the first finding; -1 none yet
	outcome  Outcome
	err      error
	progress func(int64)
}

// past reports whether a finding lies before off.
func (c *comparer) past(off int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stop >= 0 && off > c.stop
}

// found records a difference (or, with err, a failure) at off, if it is
// the first so far.
func (c *comparer) found(off int64, o Outcome, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stop < 0 || off < c.stop {
		c.stop, c.outcome, c.err = off, o, err
	}
}

func (c *comparer) done(n int64) {
	if c.progress != nil {
		c.progress(n)
	}
}

// generate walks both images' block status in order and sends the pieces
// that need reading. It records a strict status mismatch as a finding and
// stops there.
func (c *comparer) generate(ctx context.Context, a, b Image, strict bool, pieces chan<- piece) error {
	sa, sb := a.Device.Size(), b.Device.Size()
	common := min(sa, sb)
	send := func(p piece) error {
		select {
		case pieces <- p:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	// sendRun splits [off, off+n) into pieces of at most compareBuf.
	sendRun := func(off, n int64, only *Image) error {
		for end := off + n; off < end; off += compareBuf {
			if c.past(off) {
				return nil
			}
			if err := send(piece{off, min(end-off, compareBuf), only}); err != nil {
				return err
			}
		}
		return nil
	}
	off := int64(0)
	for off < common {
		if c.past(off) {
			return nil
		}
		ea, err := image.StatusAt(a.Device, off, sa-off)
		if err != nil {
			c.found(off, 0, &StatusError{a.Name, err})
			return nil
		}
		eb, err := image.StatusAt(b.Device, off, sb-off)
		if err != nil {
			c.found(off, 0, &StatusError{b.Name, err})
			return nil
		}
		n := min(ea.Length, eb.Length, common-off)
		if strict && keyOf(ea) != keyOf(eb) {
			c.found(off, StatusMismatch, nil)
			return nil
		}
		switch {
		case ea.Zero && eb.Zero:
			c.done(n)
		case ea.Present == eb.Present:
			if ea.Present {
				err = sendRun(off, n, nil)
			} else {
				c.done(n)
			}
		case ea.Present:
			err = sendRun(off, n, &a)
		default:
			err = sendRun(off, n, &b)
		}
		if err != nil {
			return err
		}
		off += n
	}
	if sa == sb {
		return nil
	}
	over := &a
	if sb > sa {
		over = &b
	}
	size := over.Device.Size()
	for off < size {
		if c.past(off) {
			return nil
		}
		e, err := image.StatusAt(over.Device, off, size-off)
		if err != nil {
			c.found(off, 0, &StatusError{over.Name, err})
			return nil
		}
		if e.Present && !e.Zero {
			if err := sendRun(off, e.Length, over); err != nil {
				return err
			}
		} else {
			c.done(e.Length)
		}
		off += e.Length
	}
	return nil
}

// run compares one piece and records what it finds.
func (c *comparer) run(a, b Image, p piece, bufA, bufB []byte) {
	read := func(im *Image, buf []byte) bool {
		if _, err := im.Device.ReadAt(buf, p.off); err != nil {
			c.found(p.off, 0, &ReadError{im.Name, p.off, err})
			return false
		}
		return true
	}
	ba, bb := bufA[:p.n], bufB[:p.n]
	if p.only != nil {
		if !read(p.only, ba) {
			return
		}
		if i := firstNonZeroSector(ba); i >= 0 {
			c.found(p.off+i, ContentMismatch, nil)
		}
		return
	}
	if !read(&a, ba) || !read(&b, bb) {
		return
	}
	if i := firstDifferentSector(ba, bb); i >= 0 {
		c.found(p.off+i, ContentMismatch, nil)
	}
}

// firstDifferentSector returns the start of the first sector of a and b
// (of equal length) that differs, or -1.
func firstDifferentSector(a, b []byte) int64 {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := 0; i < len(a); i += sector {
		end := min(i+sector, len(a))
		if !bytes.Equal(a[i:end], b[i:end]) {
			return int64(i)
		}
	}
	return -1
}

// firstNonZeroSector returns the start of the first sector of b that is
// not all zeroes, or -1.
func firstNonZeroSector(b []byte) int64 {
	for i := 0; i < len(b); i += sector {
		if !blockdev.IsZero(b[i:min(i+sector, len(b))]) {
			return int64(i)
		}
	}
	return -1
}

// IsCompareError reports whether err is a status or read failure of
// Compare, and the qemu-img exit status it maps to (3 or 4).
func IsCompareError(err error) (int, bool) {
	var se *StatusError
	var re *ReadError
	switch {
	case errors.As(err, &se):
		return 3, true
	case errors.As(err, &re):
		return 4, true
	}
	return 0, false
}
