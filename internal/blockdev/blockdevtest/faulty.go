package blockdevtest

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"vdisk/internal/blockdev"
)

// Op is a set of operation kinds a Rule applies to.
type Op uint32

// The operation kinds of a Device.
const (
	OpRead Op = 1 << iota
	OpWrite
	OpFlush
	OpTrim
	OpZero // WriteZeroes
	OpExtents
	OpClose

	// OpAll is every kind.
	OpAll = OpRead | OpWrite | OpFlush | OpTrim | OpZero | OpExtents | OpClose
)

var opNames = []string{"read", "write", "flush", "trim", "write-zeroes", "extents", "close"}

func (o Op) String() string {
	var s []string
	for i, n := range opNames {
		if o&(1<<i) != 0 {
			s = append(s, n)
		}
	}
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, "|")
}

// A Trigger is a switch that Rules wait for (Rule.After) or throw
// (Rule.Fire). It is safe for concurrent use.
type Trigger struct{ fired atomic.Bool }

// Fire throws the switch.
func (t *Trigger) Fire() { t.fired.Store(true) }

// Fired reports whether the switch was thrown.
func (t *Trigger) Fired() bool { return t.fired.Load() }

// Rule says which operations of a Faulty device fail. An operation matches
// when its kind is in Ops, it overlaps the range (if one is set), and the
// After trigger (if set) has fired. Of the matching operations, the Nth and
// the Times-1 after it fail.
type Rule struct {
	// Ops are the kinds the rule applies to; zero means OpAll.
	Ops Op
	// Off and Len restrict the rule to operations that overlap
	// [Off, Off+Len). Len 0 means any offset; Flush and Close, which have
	// no range, match only rules without one.
	Off, Len int64
	// Nth is the first matching operation to fail, counting from 1; 0 is
	// the same as 1.
	Nth int
	// Times is how many matching operations fail from the Nth on; 0 means
	// every one.
	Times int
	// After, when set, makes the rule ignore (and not count) operations
	// until the trigger has fired.
	After *Trigger
	// Fire, when set, is fired by the first operation the rule fails (or
	// passes, with Pass).
	Fire *Trigger
	// Pass lets the operations the rule selects succeed: with Fire, a rule
	// that only watches, say to fire a trigger on the third flush.
	Pass bool
	// Short makes a failed read or write transfer the first half of its
	// bytes before it returns the error, as a torn write would.
	Short bool
	// Err is the error returned; nil means ErrInjected. It is wrapped with
	// the operation.
	Err error
}

// A Fault is a Rule added to a Faulty device, with its counters.
type Fault struct {
	f       *Faulty
	rule    Rule
	matched int // operations that matched, guarded by Faulty.mu
	hits    int // operations it failed (or passed), guarded by Faulty.mu
}

// Faulty wraps a Device and fails the operations its Rules select.
// Faulty itself is the controller; Device returns the device to test, which
// has exactly the capabilities of the wrapped one. Rules may be added while
// the device is in use: all methods are safe for concurrent use, and a mutex
// serialises only the rule bookkeeping, not the I/O.
type Faulty struct {
	inner blockdev.Device
	dev   blockdev.Device

	mu     sync.Mutex
	faults []*Fault
	counts map[Op]int // operations seen, by kind
}

// NewFaulty wraps d. The Faulty device owns d: closing it closes d.
func NewFaulty(d blockdev.Device, rules ...Rule) *Faulty {
	f := &Faulty{inner: d, counts: make(map[Op]int)}
	fd := &faultyDev{f: f}
	c := blockdev.Caps{Describer: fd}
	if _, ok := d.(blockdev.Trimmer); ok {
		c.Trimmer = fd
	}
	if _, ok := d.(blockdev.ZeroWriter); ok {
		c.ZeroWriter = fd
	}
	if _, ok := d.(blockdev.Extenter); ok {
		c.Extenter = fd
	}
	f.dev = blockdev.WithCaps(fd, c)
	for _, r := range rules {
		f.Add(r)
	}
	return f
}

// Device returns the fault-injecting device.
func (f *Faulty) Device() blockdev.Device { return f.dev }

// Add adds a rule; it applies from the next operation on. Rules are tried
// in the order they were added, and the first that fails an operation ends
// the search.
func (f *Faulty) Add(r Rule) *Fault {
	if r.Ops == 0 {
		r.Ops = OpAll
	}
	if r.Nth == 0 {
		r.Nth = 1
	}
	flt := &Fault{f: f, rule: r}
	f.mu.Lock()
	f.faults = append(f.faults, flt)
	f.mu.Unlock()
	return flt
}

// Clear removes every rule.
func (f *Faulty) Clear() {
	f.mu.Lock()
	f.faults = nil
	f.mu.Unlock()
}

// Count returns how many operations of the kinds in ops the device has seen.
func (f *Faulty) Count(ops Op) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for k, c := range f.counts {
		if k&ops != 0 {
			n += c
		}
	}
	return n
}

// Hits returns how many operations the rule failed (or passed, with Pass).
func (flt *Fault) Hits() int {
	flt.f.mu.Lock()
	defer flt.f.mu.Unlock()
	return flt.hits
}

// decide runs the rules for one operation. It returns the rule that fails
// it, or nil.
func (f *Faulty) decide(op Op, off, n int64, ranged bool) *Rule {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.counts[op]++
	for _, flt := range f.faults {
		r := &flt.rule
		if r.Ops&op == 0 || (r.After != nil && !r.After.Fired()) {
			continue
		}
		if r.Len > 0 && (!ranged || off >= r.Off+r.Len || off+max(n, 1) <= r.Off) {
			continue
		}
		flt.matched++
		if flt.matched < r.Nth || (r.Times > 0 && flt.hits >= r.Times) {
			continue
		}
		flt.hits++
		if r.Fire != nil {
			r.Fire.Fire()
		}
		if !r.Pass {
			return r
		}
	}
	return nil
}

// fail is the error rule r returns for op.
func (r *Rule) fail(op Op, off, n int64) error {
	err := r.Err
	if err == nil {
		err = ErrInjected
	}
	return fmt.Errorf("%v at %d+%d: %w", op, off, n, err)
}

// faultyDev is the Device a Faulty hands out. It implements every
// capability; NewFaulty exposes those of the wrapped device only.
type faultyDev struct{ f *Faulty }

var (
	_ blockdev.Device     = (*faultyDev)(nil)
	_ blockdev.Trimmer    = (*faultyDev)(nil)
	_ blockdev.ZeroWriter = (*faultyDev)(nil)
	_ blockdev.Extenter   = (*faultyDev)(nil)
	_ blockdev.Describer  = (*faultyDev)(nil)
)

func (d *faultyDev) Size() int64         { return d.f.inner.Size() }
func (d *faultyDev) Info() blockdev.Info { return blockdev.InfoOf(d.f.inner) }

func (d *faultyDev) ReadAt(p []byte, off int64) (int, error) {
	if r := d.f.decide(OpRead, off, int64(len(p)), true); r != nil {
		return d.short(r, OpRead, p, off, d.f.inner.ReadAt)
	}
	return d.f.inner.ReadAt(p, off)
}

func (d *faultyDev) WriteAt(p []byte, off int64) (int, error) {
	if r := d.f.decide(OpWrite, off, int64(len(p)), true); r != nil {
		return d.short(r, OpWrite, p, off, d.f.inner.WriteAt)
	}
	return d.f.inner.WriteAt(p, off)
}

// short fails a read or write by rule r, first transferring half of p when
// the rule says Short.
func (d *faultyDev) short(r *Rule, op Op, p []byte, off int64, io func([]byte, int64) (int, error)) (int, error) {
	n := 0
	if r.Short && len(p) > 1 {
		var err error
		if n, err = io(p[:len(p)/2], off); err != nil {
			return n, err
		}
	}
	return n, r.fail(op, off, int64(len(p)))
}

func (d *faultyDev) Flush() error {
	if r := d.f.decide(OpFlush, 0, 0, false); r != nil {
		return r.fail(OpFlush, 0, 0)
	}
	return d.f.inner.Flush()
}

func (d *faultyDev) Close() error {
	if r := d.f.decide(OpClose, 0, 0, false); r != nil {
		return r.fail(OpClose, 0, 0)
	}
	return d.f.inner.Close()
}

func (d *faultyDev) Trim(off, n int64) error {
	if r := d.f.decide(OpTrim, off, n, true); r != nil {
		return r.fail(OpTrim, off, n)
	}
	return d.f.inner.(blockdev.Trimmer).Trim(off, n)
}

func (d *faultyDev) WriteZeroes(off, n int64, mayTrim bool) error {
	if r := d.f.decide(OpZero, off, n, true); r != nil {
		return r.fail(OpZero, off, n)
	}
	return d.f.inner.(blockdev.ZeroWriter).WriteZeroes(off, n, mayTrim)
}

func (d *faultyDev) Extents(off, n int64) ([]blockdev.Extent, error) {
	if r := d.f.decide(OpExtents, off, n, true); r != nil {
		return nil, r.fail(OpExtents, off, n)
	}
	return d.f.inner.(blockdev.Extenter).Extents(off, n)
}
