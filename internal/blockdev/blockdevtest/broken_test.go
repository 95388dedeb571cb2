package blockdevtest

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"vdisk/internal/blockdev"
)

// The suite must fail devices that break the contract. Each broken device
// runs the suite in a child test process (a failing suite cannot run in
// this one without failing it); the child must fail, saying why.

// brokenEnv names the broken device the child process runs the suite on.
const brokenEnv = "BLOCKDEVTEST_BROKEN"

// tornAtEnd writes what fits before reporting a range error.
type tornAtEnd struct{ *blockdev.Mem }

func (d tornAtEnd) WriteAt(p []byte, off int64) (int, error) {
	if off >= 0 && off < d.Size() && off+int64(len(p)) > d.Size() {
		n, _ := d.Mem.WriteAt(p[:d.Size()-off], off)
		return n, blockdev.ErrOutOfRange
	}
	return d.Mem.WriteAt(p, off)
}

// lazyTrim claims to trim but keeps the data.
type lazyTrim struct{ *blockdev.Mem }

func (d lazyTrim) Trim(off, n int64) error { return blockdev.CheckRange(off, n, d.Size()) }

// allZero reports every range as a hole, data or not.
type allZero struct{ *blockdev.Mem }

func (d allZero) Extents(off, n int64) ([]blockdev.Extent, error) {
	if err := blockdev.CheckRange(off, n, d.Size()); err != nil {
		return nil, err
	}
	return []blockdev.Extent{{Off: off, Len: n, Flags: blockdev.ExtentHole | blockdev.ExtentZero}}, nil
}

// gappy leaves a gap between its extents.
type gappy struct{ *blockdev.Mem }

func (d gappy) Extents(off, n int64) ([]blockdev.Extent, error) {
	if err := blockdev.CheckRange(off, n, d.Size()); err != nil {
		return nil, err
	}
	if n < 3 {
		return []blockdev.Extent{{Off: off, Len: n}}, nil
	}
	return []blockdev.Extent{{Off: off, Len: 1}, {Off: off + 2, Len: n - 2}}, nil
}

// undead keeps working after Close.
type undead struct{ *blockdev.Mem }

func (d undead) Close() error { return nil }

// liar says it is read-only but writes.
type liar struct{ *blockdev.Mem }

func (d liar) Info() blockdev.Info { return blockdev.Info{ReadOnly: true} }

// sloppyRange accepts a zero-length read past the end and a negative
// offset for Flush-free reads.
type sloppyRange struct{ *blockdev.Mem }

func (d sloppyRange) ReadAt(p []byte, off int64) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return d.Mem.ReadAt(p, off)
}

var brokenDevices = map[string]struct {
	open func(size int64) blockdev.Device
	want string // the child's output says this
}{
	"torn write at the end":    {func(s int64) blockdev.Device { return tornAtEnd{blockdev.NewMem(s)} }, "WriteOutOfRange"},
	"trim keeps data":          {func(s int64) blockdev.Device { return lazyTrim{blockdev.NewMem(s)} }, "--- FAIL: TestBroken/Trim"},
	"extents claim zero":       {func(s int64) blockdev.Device { return allZero{blockdev.NewMem(s)} }, "claims zeroes"},
	"extents with a gap":       {func(s int64) blockdev.Device { return gappy{blockdev.NewMem(s)} }, "not contiguous"},
	"works after close":        {func(s int64) blockdev.Device { return undead{blockdev.NewMem(s)} }, "after Close"},
	"read-only that writes":    {func(s int64) blockdev.Device { return liar{blockdev.NewMem(s)} }, "want 0, ErrReadOnly"},
	"zero-length past the end": {func(s int64) blockdev.Device { return sloppyRange{blockdev.NewMem(s)} }, "past_the_end,_zero_length"},
}

// TestBroken is the child: it runs the suite on the device brokenEnv names.
func TestBroken(t *testing.T) {
	name := os.Getenv(brokenEnv)
	if name == "" {
		t.Skip("runs only as the child of TestSuiteCatchesBrokenDevices")
	}
	b, ok := brokenDevices[name]
	if !ok {
		t.Fatalf("no broken device %q", name)
	}
	Run(t, func(t *testing.T, size int64) blockdev.Device { return b.open(size) })
}

func TestSuiteCatchesBrokenDevices(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range brokenDevices {
		t.Run(name, func(t *testing.T) {
			cmd := exec.Command(exe, "-test.run=^TestBroken$", "-test.v")
			cmd.Env = append(os.Environ(), brokenEnv+"="+name)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				t.Fatalf("suite passed a broken device (err %v):\n%s", err, out)
			}
			if !strings.Contains(string(out), b.want) {
				t.Errorf("suite failed, but its output does not say %q:\n%s", b.want, out)
			}
		})
	}
}
