package blockdevtest

import (
	"bytes"
	"errors"
	"testing"

	"vdisk/internal/blockdev"
)

// readAll reads the whole of d.
func readAll(t *testing.T, d blockdev.Device) []byte {
	t.Helper()
	b := make([]byte, d.Size())
	if _, err := d.ReadAt(b, 0); err != nil {
		t.Fatalf("read: %v", err)
	}
	return b
}

func mustWrite(t *testing.T, d blockdev.Device, s string, off int64) {
	t.Helper()
	if _, err := d.WriteAt([]byte(s), off); err != nil {
		t.Fatalf("write %q at %d: %v", s, off, err)
	}
}

func TestCrashDropsUnflushedWrites(t *testing.T) {
	c := NewCrashable(1 << 20)
	mustWrite(t, c, "flushed", 100)
	if err := c.Trim(200<<10, 4096); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, c, "LOST", 100)       // overwrites flushed data
	mustWrite(t, c, "also lost", 5000) // new data
	if err := c.WriteZeroes(100, 3, false); err != nil {
		t.Fatal(err)
	}
	if got := len(c.Pending()); got != 3 {
		t.Errorf("Pending() has %d writes, want 3", got)
	}
	cur := readAll(t, c)
	if !bytes.Equal(cur[100:107], []byte("\x00\x00\x00Thed")) || !bytes.Equal(cur[5000:5009], []byte("also lost")) {
		t.Fatalf("current image does not show the unflushed writes: %q %q", cur[100:107], cur[5000:5009])
	}
	img := c.Crash()
	want := make([]byte, 1<<20)
	copy(want[100:], "flushed")
	if got := readAll(t, img); !bytes.Equal(got, want) {
		t.Errorf("durable image after the crash differs from the flushed state")
	}
	if _, err := c.ReadAt(make([]byte, 1), 0); !errors.Is(err, blockdev.ErrClosed) {
		t.Errorf("ReadAt after Crash: %v, want ErrClosed", err)
	}
	if err := c.Flush(); !errors.Is(err, blockdev.ErrClosed) {
		t.Errorf("Flush after Crash: %v, want ErrClosed", err)
	}
	// A second Crash returns the same durable image.
	if got := readAll(t, c.Crash()); !bytes.Equal(got, want) {
		t.Errorf("second Crash returned a different image")
	}
}

func TestCrashKeepsFlushedWrites(t *testing.T) {
	c := NewCrashable(256 << 10)
	for i := range 10 {
		mustWrite(t, c, "gen", int64(i)*1000)
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	if c.Flushes() != 10 {
		t.Errorf("Flushes() = %d, want 10", c.Flushes())
	}
	if !bytes.Equal(c.Durable(), readAll(t, c)) {
		t.Errorf("durable image differs from the current one after a flush")
	}
	img := readAll(t, c.Crash())
	for i := range 10 {
		if string(img[i*1000:i*1000+3]) != "gen" {
			t.Errorf("flushed write %d lost in the crash", i)
		}
	}
}

func TestCloseFlushes(t *testing.T) {
	c := NewCrashable(64 << 10)
	mustWrite(t, c, "closed", 10)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); !errors.Is(err, blockdev.ErrClosed) {
		t.Errorf("second Close: %v, want ErrClosed", err)
	}
	if got := readAll(t, c.Crash()); string(got[10:16]) != "closed" {
		t.Errorf("write before Close lost in the crash: %q", got[10:16])
	}
}

func TestCrashKeeping(t *testing.T) {
	tests := []struct {
		name string
		keep func(int, Write) bool
		want string // bytes 0..3 of the durable image
	}{
		{"none", func(int, Write) bool { return false }, "aaaa"},
		{"all", func(int, Write) bool { return true }, "dddd"},
		{"first only", func(i int, _ Write) bool { return i == 0 }, "bbbb"},
		{"the zeroing only", func(_ int, w Write) bool { return w.Data == nil }, "\x00\x00aa"},
		{"even ones", func(i int, _ Write) bool { return i%2 == 0 }, "ccbb"},
		{"odd ones", func(i int, _ Write) bool { return i%2 == 1 }, "dddd"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := NewCrashable(4096)
			mustWrite(t, c, "aaaa", 0)
			if err := c.Flush(); err != nil {
				t.Fatal(err)
			}
			mustWrite(t, c, "bbbb", 0)                         // 0
			if err := c.WriteZeroes(0, 2, false); err != nil { // 1
				t.Fatal(err)
			}
			mustWrite(t, c, "cc", 0)   // 2
			mustWrite(t, c, "dddd", 0) // 3
			got := readAll(t, c.CrashKeeping(tc.keep))
			if string(got[:4]) != tc.want {
				t.Errorf("durable bytes %q, want %q", got[:4], tc.want)
			}
		})
	}
}

func TestNewCrashableFrom(t *testing.T) {
	img := bytes.Repeat([]byte("xy"), 2048)
	c, err := NewCrashableFrom(img)
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, c, "zz", 0)
	if got := readAll(t, c.Crash()); !bytes.Equal(got, img) {
		t.Errorf("crash of an unflushed Crashable did not return the initial image")
	}
}
