package blockdevtest

import (
	"testing"

	"vdisk/internal/blockdev"
)

// plain hides every optional capability of a Device.
type plain struct{ blockdev.Device }

func TestConformance(t *testing.T) {
	tests := []struct {
		name string
		open Open
	}{
		{"Crashable", func(t *testing.T, size int64) blockdev.Device { return NewCrashable(size) }},
		{"Faulty(Mem) without rules", func(t *testing.T, size int64) blockdev.Device {
			return NewFaulty(blockdev.NewMem(size)).Device()
		}},
		{"Faulty(plain) without rules", func(t *testing.T, size int64) blockdev.Device {
			return NewFaulty(plain{blockdev.NewMem(size)}).Device()
		}},
		{"Faulty(ReadOnly(Mem)) with a rule that never fires", func(t *testing.T, size int64) blockdev.Device {
			return NewFaulty(blockdev.ReadOnly(blockdev.NewMem(size)), Rule{After: new(Trigger)}).Device()
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { Run(t, tc.open) })
	}
}

func TestRunWithSize(t *testing.T) {
	RunWith(t, Options{Size: MinSize}, func(t *testing.T, size int64) blockdev.Device { return blockdev.NewMem(size) })
}
