package fuseexport

import (
	"bytes"
	"errors"
	"os"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"vdisk/internal/blockdev"
)

// openRW opens the export's file read-write for the rest of the test.
func openRW(t *testing.T, e *Export) *os.File {
	t.Helper()
	f, err := os.OpenFile(e.Path(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// fill writes n bytes of b at off on dev.
func fill(t *testing.T, dev blockdev.Device, b byte, off, n int64) {
	t.Helper()
	if _, err := dev.WriteAt(bytes.Repeat([]byte{b}, int(n)), off); err != nil {
		t.Fatal(err)
	}
}

func TestFallocate(t *testing.T) {
	requireFUSE(t)
	const (
		mib  = 1 << 20
		size = 8 * mib
	)
	const (
		keep  = unix.FALLOC_FL_KEEP_SIZE
		punch = unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE
		zero  = unix.FALLOC_FL_ZERO_RANGE
	)
	tests := []struct {
		name       string
		mode       uint32
		off, n     int64
		wantErr    error
		wantTrims  int64
		wantZeroes int64
		zeroed     [2]int64 // range that must read as zeroes afterwards
	}{
		{name: "punch hole", mode: punch, off: mib, n: 2 * mib, wantTrims: 1, zeroed: [2]int64{mib, 3 * mib}},
		{name: "punch hole past the end is cut off", mode: punch, off: 7 * mib, n: 4 * mib, wantTrims: 1, zeroed: [2]int64{7 * mib, size}},
		{name: "zero range", mode: zero, off: 2 * mib, n: mib, wantZeroes: 1, zeroed: [2]int64{2 * mib, 3 * mib}},
		{name: "zero range keep size", mode: zero | keep, off: 4*mib + 512, n: 4096, wantZeroes: 1, zeroed: [2]int64{4*mib + 512, 4*mib + 4608}},
		{name: "zero range past the end", mode: zero, off: 7 * mib, n: 2 * mib, wantErr: syscall.ENOSPC},
		{name: "allocate inside", mode: 0, off: 0, n: size},
		{name: "allocate past the end", mode: 0, off: size - 4096, n: 8192, wantErr: syscall.ENOSPC},
		{name: "allocate past the end keep size", mode: keep, off: size - 4096, n: 8192},
		{name: "collapse range", mode: unix.FALLOC_FL_COLLAPSE_RANGE, off: 0, n: mib, wantErr: syscall.EOPNOTSUPP},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dev := newCounting(size)
			fill(t, dev, 0xaa, 0, size)
			e := mount(t, dev, Options{})
			f := openRW(t, e)
			err := unix.Fallocate(int(f.Fd()), tt.mode, tt.off, tt.n)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("fallocate = %v, want %v", err, tt.wantErr)
				}
			} else if err != nil {
				t.Fatalf("fallocate: %v", err)
			}
			if got := dev.trims.Load(); got != tt.wantTrims {
				t.Errorf("Trim called %d times, want %d", got, tt.wantTrims)
			}
			if got := dev.zeroes.Load(); got != tt.wantZeroes {
				t.Errorf("WriteZeroes called %d times, want %d", got, tt.wantZeroes)
			}
			if tt.wantZeroes > 0 && dev.lastZeroTrim.Load() {
				t.Error("ZERO_RANGE reached WriteZeroes with mayTrim")
			}
			// Everything outside the zeroed range keeps its data.
			got := make([]byte, size)
			if _, err := f.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			for i, b := range got {
				in := int64(i) >= tt.zeroed[0] && int64(i) < tt.zeroed[1]
				if in && b != 0 || !in && b != 0xaa {
					t.Fatalf("byte %d is %#x after fallocate (zeroed range %v)", i, b, tt.zeroed)
				}
			}
		})
	}
}

func TestPunchHoleWithoutTrimmer(t *testing.T) {
	requireFUSE(t)
	dev := plain{blockdev.NewMem(1 << 20)}
	e := mount(t, dev, Options{})
	f := openRW(t, e)
	err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 4096)
	if !errors.Is(err, syscall.EOPNOTSUPP) {
		t.Fatalf("punch hole on a device without Trim = %v, want EOPNOTSUPP", err)
	}
	// ZERO_RANGE still works: WriteZeroes falls back to writing zeroes.
	fill(t, dev, 0xaa, 0, 8192)
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_ZERO_RANGE, 0, 4096); err != nil {
		t.Fatalf("zero range on a plain device: %v", err)
	}
	got := make([]byte, 8192)
	if _, err := dev.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !blockdev.IsZero(got[:4096]) || got[4096] != 0xaa {
		t.Fatal("zero range did not zero exactly its range")
	}
}

func TestSeekDataHole(t *testing.T) {
	requireFUSE(t)
	const mib = 1 << 20
	dev := blockdev.NewMem(16 * mib)
	// Data at [2, 3) MiB and [8, 10) MiB; holes elsewhere.
	fill(t, dev, 1, 2*mib, mib)
	fill(t, dev, 1, 8*mib, 2*mib)
	e := mount(t, dev, Options{})
	f := openRW(t, e)
	tests := []struct {
		name    string
		off     int64
		whence  int
		want    int64
		wantErr error
	}{
		{name: "data from start", off: 0, whence: unix.SEEK_DATA, want: 2 * mib},
		{name: "data inside data", off: 2*mib + 100, whence: unix.SEEK_DATA, want: 2*mib + 100},
		{name: "next data", off: 3 * mib, whence: unix.SEEK_DATA, want: 8 * mib},
		{name: "no data after", off: 10 * mib, whence: unix.SEEK_DATA, wantErr: syscall.ENXIO},
		{name: "hole from start", off: 0, whence: unix.SEEK_HOLE, want: 0},
		{name: "hole after data", off: 2 * mib, whence: unix.SEEK_HOLE, want: 3 * mib},
		{name: "hole after second data", off: 9 * mib, whence: unix.SEEK_HOLE, want: 10 * mib},
		{name: "past the end", off: 16 * mib, whence: unix.SEEK_HOLE, wantErr: syscall.ENXIO},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := unix.Seek(int(f.Fd()), tt.off, tt.whence)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("lseek(%d, %d) = %d, %v; want %v", tt.off, tt.whence, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("lseek(%d, %d) = %d, %v; want %d", tt.off, tt.whence, got, err, tt.want)
			}
		})
	}
}

func TestSeekHoleAllData(t *testing.T) {
	requireFUSE(t)
	const size = 1 << 20
	e := mount(t, plain{blockdev.NewMem(size)}, Options{}) // no Extenter: all data
	f := openRW(t, e)
	if got, err := unix.Seek(int(f.Fd()), 100, unix.SEEK_DATA); err != nil || got != 100 {
		t.Fatalf("SEEK_DATA = %d, %v; want 100", got, err)
	}
	if got, err := unix.Seek(int(f.Fd()), 100, unix.SEEK_HOLE); err != nil || got != size {
		t.Fatalf("SEEK_HOLE = %d, %v; want the end, %d", got, err, size)
	}
}

func TestFsyncAndCloseFlush(t *testing.T) {
	requireFUSE(t)
	dev := newCounting(1 << 20)
	e := mount(t, dev, Options{})
	f, err := os.OpenFile(e.Path(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("data"), 0); err != nil {
		t.Fatal(err)
	}
	before := dev.flushes.Load()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := dev.flushes.Load(); got != before+1 {
		t.Fatalf("fsync made %d Flush calls, want 1", got-before)
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
	if got := dev.flushes.Load(); got != before+2 {
		t.Fatalf("fdatasync made %d Flush calls, want 1", got-before-1)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got := dev.flushes.Load(); got != before+3 {
		t.Fatalf("close made %d Flush calls, want 1", got-before-2)
	}
}

func TestBlocksFollowAllocation(t *testing.T) {
	requireFUSE(t)
	const mib = 1 << 20
	dev := blockdev.NewMem(8 * mib)
	fill(t, dev, 1, 0, 2*mib)
	e := mount(t, dev, Options{})
	var st unix.Stat_t
	if err := unix.Stat(e.Path(), &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 != 2*mib {
		t.Fatalf("file has %d bytes in blocks, want %d (the allocated part)", st.Blocks*512, 2*mib)
	}
}
