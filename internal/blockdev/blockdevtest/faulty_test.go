package blockdevtest

import (
	"errors"
	"syscall"
	"testing"

	"vdisk/internal/blockdev"
)

// opCalls run one operation of each kind on d, over [off, off+512).
func opCalls(d blockdev.Device) map[Op]func(off int64) error {
	return map[Op]func(int64) error{
		OpRead:    func(off int64) error { _, err := d.ReadAt(make([]byte, 512), off); return err },
		OpWrite:   func(off int64) error { _, err := d.WriteAt(make([]byte, 512), off); return err },
		OpFlush:   func(int64) error { return d.Flush() },
		OpTrim:    func(off int64) error { return d.(blockdev.Trimmer).Trim(off, 512) },
		OpZero:    func(off int64) error { return d.(blockdev.ZeroWriter).WriteZeroes(off, 512, false) },
		OpExtents: func(off int64) error { _, err := d.(blockdev.Extenter).Extents(off, 512); return err },
	}
}

func TestFaultyPerOpKind(t *testing.T) {
	kinds := []Op{OpRead, OpWrite, OpFlush, OpTrim, OpZero, OpExtents}
	for _, kind := range kinds {
		t.Run(kind.String(), func(t *testing.T) {
			f := NewFaulty(blockdev.NewMem(1<<20), Rule{Ops: kind})
			calls := opCalls(f.Device())
			for _, other := range kinds {
				err := calls[other](0)
				if other == kind {
					wantErr(t, other.String(), err, ErrInjected)
				} else if err != nil {
					t.Errorf("%v: %v, want success (rule is for %v)", other, err, kind)
				}
			}
		})
	}
}

func TestFaultyNthAndTimes(t *testing.T) {
	tests := []struct {
		name     string
		rule     Rule
		failures []bool // outcome of writes 1..n
	}{
		{"every write", Rule{Ops: OpWrite}, []bool{true, true, true, true}},
		{"third write once", Rule{Ops: OpWrite, Nth: 3, Times: 1}, []bool{false, false, true, false, false}},
		{"from the second on", Rule{Ops: OpWrite, Nth: 2}, []bool{false, true, true, true}},
		{"two from the second", Rule{Ops: OpWrite, Nth: 2, Times: 2}, []bool{false, true, true, false}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := NewFaulty(blockdev.NewMem(1 << 20))
			flt := f.Add(tc.rule)
			hits := 0
			for i, fail := range tc.failures {
				_, err := f.Device().WriteAt([]byte{1}, int64(i))
				if fail != (err != nil) {
					t.Errorf("write %d: error %v, want failure %v", i+1, err, fail)
				}
				if fail {
					hits++
					wantErr(t, "write", err, ErrInjected)
				}
			}
			if flt.Hits() != hits {
				t.Errorf("Hits() = %d, want %d", flt.Hits(), hits)
			}
			if f.Count(OpWrite) != len(tc.failures) || f.Count(OpRead) != 0 {
				t.Errorf("Count = %d writes, %d reads; want %d, 0", f.Count(OpWrite), f.Count(OpRead), len(tc.failures))
			}
		})
	}
}

func TestFaultyRange(t *testing.T) {
	f := NewFaulty(blockdev.NewMem(1<<20), Rule{Ops: OpRead | OpWrite, Off: 8192, Len: 4096})
	d := f.Device()
	tests := []struct {
		off  int64
		n    int
		fail bool
	}{
		{0, 512, false},
		{8192 - 512, 512, false}, // ends where the range starts
		{8192 - 1, 2, true},      // straddles its start
		{10000, 1, true},
		{12288 - 1, 1, true},
		{12288, 512, false}, // starts where it ends
	}
	for _, tc := range tests {
		_, werr := d.WriteAt(make([]byte, tc.n), tc.off)
		_, rerr := d.ReadAt(make([]byte, tc.n), tc.off)
		for _, err := range []error{werr, rerr} {
			if tc.fail != errors.Is(err, ErrInjected) {
				t.Errorf("%d bytes at %d: error %v, want failure %v", tc.n, tc.off, err, tc.fail)
			}
		}
	}
	// Flush has no range, so a ranged rule never fails it.
	if err := d.Flush(); err != nil {
		t.Errorf("Flush: %v", err)
	}
}

func TestFaultyTriggers(t *testing.T) {
	// After the second flush, every write fails with ENOSPC.
	trig := new(Trigger)
	f := NewFaulty(blockdev.NewMem(1<<20),
		Rule{Ops: OpFlush, Nth: 2, Times: 1, Pass: true, Fire: trig},
		Rule{Ops: OpWrite, After: trig, Err: syscall.ENOSPC},
	)
	d := f.Device()
	for i := range 3 {
		if _, err := d.WriteAt([]byte{1}, int64(i)); err != nil {
			t.Fatalf("write %d before the trigger: %v", i, err)
		}
		if err := d.Flush(); err != nil {
			t.Fatalf("flush %d: %v", i, err)
		}
		if got, want := trig.Fired(), i >= 1; got != want {
			t.Fatalf("after flush %d: Fired() = %v, want %v", i+1, got, want)
		}
		if i >= 1 {
			break
		}
	}
	_, err := d.WriteAt([]byte{1}, 0)
	if blockdev.Errno(err) != syscall.ENOSPC {
		t.Errorf("write after the trigger: %v (errno %v), want ENOSPC", err, blockdev.Errno(err))
	}
	// A trigger fired by hand.
	manual := new(Trigger)
	f.Add(Rule{Ops: OpRead, After: manual})
	if _, err := d.ReadAt(make([]byte, 1), 0); err != nil {
		t.Errorf("read before the manual trigger: %v", err)
	}
	manual.Fire()
	if _, err := d.ReadAt(make([]byte, 1), 0); !errors.Is(err, ErrInjected) {
		t.Errorf("read after the manual trigger: %v, want ErrInjected", err)
	}
	f.Clear()
	if _, err := d.ReadAt(make([]byte, 1), 0); err != nil {
		t.Errorf("read after Clear: %v", err)
	}
}

func TestFaultyShortWrite(t *testing.T) {
	m := blockdev.NewMem(4096)
	f := NewFaulty(m, Rule{Ops: OpWrite, Short: true})
	n, err := f.Device().WriteAt([]byte("abcdefgh"), 0)
	if n != 4 || !errors.Is(err, ErrInjected) {
		t.Fatalf("WriteAt = %d, %v; want 4, ErrInjected", n, err)
	}
	b := make([]byte, 8)
	if _, err := m.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	if string(b) != "abcd\x00\x00\x00\x00" {
		t.Errorf("inner device holds %q, want the first half only", b)
	}
}

func TestFaultyKeepsCapabilities(t *testing.T) {
	for _, tc := range []struct {
		name string
		d    blockdev.Device
		want bool
	}{
		{"Mem", blockdev.NewMem(4096), true},
		{"plain", plain{blockdev.NewMem(4096)}, false},
	} {
		d := NewFaulty(tc.d).Device()
		_, tok := d.(blockdev.Trimmer)
		_, zok := d.(blockdev.ZeroWriter)
		_, eok := d.(blockdev.Extenter)
		if tok != tc.want || zok != tc.want || eok != tc.want {
			t.Errorf("%s: capabilities %v/%v/%v, want all %v", tc.name, tok, zok, eok, tc.want)
		}
	}
}

func TestFaultyClose(t *testing.T) {
	f := NewFaulty(blockdev.NewMem(4096), Rule{Ops: OpClose, Times: 1})
	wantErr(t, "first Close", f.Device().Close(), ErrInjected)
	if err := f.Device().Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := f.Device().ReadAt(make([]byte, 1), 0); !errors.Is(err, blockdev.ErrClosed) {
		t.Errorf("ReadAt after Close: %v, want ErrClosed", err)
	}
}

func TestOpString(t *testing.T) {
	for _, tc := range []struct {
		op   Op
		want string
	}{
		{OpRead, "read"},
		{OpWrite | OpFlush, "write|flush"},
		{0, "none"},
	} {
		if got := tc.op.String(); got != tc.want {
			t.Errorf("%d.String() = %q, want %q", tc.op, got, tc.want)
		}
	}
}
