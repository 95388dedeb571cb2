package imageops

import (
	"context"
	"fmt"
	"math"

	"vdisk/internal/blockdev"
	"vdisk/internal/convert"
)

// DDOptions are the operands of dd: block size, and counts in blocks.
type DDOptions struct {
	// BS is the block size in bytes (qemu-img dd's default: 512).
	BS int64
	// Count, when HasCount, bounds the input as qemu-img dd does: to
	// Count*BS bytes from the start of the input, skipped blocks
	// included.
	Count    int64
	HasCount bool
	// Skip is the number of input blocks to skip.
	Skip int64
	// Seek is the number of output blocks to skip (vdisk's addition):
	// the data lands at Seek*BS.
	Seek int64
}

// DDPlan is what a dd copies: the input's bytes [In, In+Len) to the
// output at Out, into an output of at least OutSize bytes.
type DDPlan struct {
	In, Len, Out, OutSize int64
	// CannotSkip says Skip went past the input's end (qemu-img says
	// "cannot skip to specified offset" and copies nothing).
	CannotSkip bool
}

// PlanDD works out what dd copies from an input of inSize bytes, as
// qemu-img dd does (its output is as large as what it copies), with the
// output moved Seek blocks on.
func PlanDD(inSize int64, o DDOptions) (DDPlan, error) {
	if o.BS < 1 || o.BS > math.MaxInt32 {
		return DDPlan{}, fmt.Errorf("bs=%d: must be between 1 and %d", o.BS, math.MaxInt32)
	}
	if o.Count < 0 || o.Skip < 0 || o.Seek < 0 {
		return DDPlan{}, fmt.Errorf("dd: negative count, skip or seek")
	}
	end := inSize
	if o.HasCount && o.Count <= math.MaxInt64/o.BS && o.Count*o.BS < end {
		end = o.Count * o.BS
	}
	var p DDPlan
	if o.Skip > math.MaxInt64/o.BS || end < o.Skip*o.BS {
		p.CannotSkip = true
		p.In = end
	} else {
		p.In = o.Skip * o.BS
	}
	p.Len = end - p.In
	if o.Seek > (math.MaxInt64-p.Len)/o.BS {
		return DDPlan{}, fmt.Errorf("dd: seek=%d with bs=%d is past the largest size", o.Seek, o.BS)
	}
	p.Out = o.Seek * o.BS
	p.OutSize = p.Out + p.Len
	return p, nil
}

// DD copies p.Len bytes of src at p.In to dst at p.Out: zero runs of the
// source are skipped when dstZeroed (a new output), and written as zeroes
// otherwise; the copy runs in parallel. An existing output too small for
// the copy grows to p.OutSize when its format can (as GNU dd extends a
// file); it flushes dst.
func DD(ctx context.Context, dst, src blockdev.Device, p DDPlan, dstZeroed bool, progress func(int64)) error {
	if p.Len == 0 {
		return dst.Flush()
	}
	if err := blockdev.CheckRange(p.In, p.Len, src.Size()); err != nil {
		return fmt.Errorf("dd: input: %w", err)
	}
	if dst.Size() < p.Out+p.Len {
		r, ok := dst.(blockdev.Resizer)
		if !ok {
			return fmt.Errorf("dd: the output is %d bytes, too small for %d bytes at %d, and its format cannot grow", dst.Size(), p.Len, p.Out)
		}
		if err := r.Resize(p.Out + p.Len); err != nil {
			return fmt.Errorf("dd: grow the output to %d bytes: %w", p.Out+p.Len, err)
		}
	}
	_, err := convert.Copy(ctx, &window{d: dst, base: p.Out, n: p.Len}, &window{d: src, base: p.In, n: p.Len},
		convert.Options{Sparse: true, DstZeroed: dstZeroed, Progress: progress})
	if err != nil {
		return fmt.Errorf("dd: %w", err)
	}
	return nil
}

// window is the range [base, base+n) of a device, as a device of its own.
type window struct {
	d       blockdev.Device
	base, n int64
}

var (
	_ blockdev.Extenter   = (*window)(nil)
	_ blockdev.ZeroWriter = (*window)(nil)
)

func (w *window) Size() int64  { return w.n }
func (w *window) Flush() error { return w.d.Flush() }
func (w *window) Close() error { return nil }

func (w *window) ReadAt(p []byte, off int64) (int, error) {
	if err := blockdev.CheckRange(off, int64(len(p)), w.n); err != nil {
		return 0, err
	}
	return w.d.ReadAt(p, w.base+off)
}

func (w *window) WriteAt(p []byte, off int64) (int, error) {
	if err := blockdev.CheckRange(off, int64(len(p)), w.n); err != nil {
		return 0, err
	}
	return w.d.WriteAt(p, w.base+off)
}

func (w *window) WriteZeroes(off, n int64, mayTrim bool) error {
	if err := blockdev.CheckRange(off, n, w.n); err != nil {
		return err
	}
	return blockdev.WriteZeroes(w.d, w.base+off, n, mayTrim)
}

func (w *window) Extents(off, n int64) ([]blockdev.Extent, error) {
	if err := blockdev.CheckRange(off, n, w.n); err != nil {
		return nil, err
	}
	es, err := blockdev.Extents(w.d, w.base+off, n)
	if err != nil {
		return nil, err
	}
	out := make([]blockdev.Extent, 0, len(es))
	for _, e := range es {
		s, t := max(e.Off, w.base+off), min(e.Off+e.Len, w.base+off+n)
		if s < t {
			out = append(out, blockdev.Extent{Off: s - w.base, Len: t - s, Flags: e.Flags})
		}
	}
	return out, nil
}
