package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

func TestStateRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state") // created by saveState
	if got, err := loadState(dir); err != nil || got != nil {
		t.Fatalf("load of a missing state = %v, %v; want nothing", got, err)
	}
	want := []stateDisk{
		{ID: "0123456789ab", File: "/a.img", Format: "raw", Via: "loop", Device: "/dev/loop3", OpenedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)},
		{ID: "ba9876543210", File: "/b.img", Format: "raw", ReadOnly: true, Via: "fuse", Device: "/dev/loop4", OpenedAt: time.Date(2026, 1, 2, 3, 4, 6, 0, time.UTC)},
		// The kernel devices the daemon serves keep their index, 0 included.
		{ID: "c00000000000", File: "/c.img", Format: "qcow2", Via: "nbd", ViaReason: "asked for (--via nbd)", Device: "/dev/nbd5", Index: ptr(5), OpenedAt: time.Date(2026, 1, 2, 3, 4, 7, 0, time.UTC)},
		{ID: "d00000000000", File: "/d.img", Format: "raw", Via: "ublk", ViaReason: "ublk: /dev/ublk-control present", Device: "/dev/ublkb0", Index: ptr(0), OpenedAt: time.Date(2026, 1, 2, 3, 4, 8, 0, time.UTC)},
	}
	if err := saveState(dir, want); err != nil {
		t.Fatal(err)
	}
	got, err := loadState(dir)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("round trip: got %+v, %v; want %+v", got, err, want)
	}
	fi, err := os.Stat(filepath.Join(dir, stateFileName))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file mode: %v, %v", fi, err)
	}
	// Overwrite with fewer disks: the file is replaced whole, and no
	// temporary file is left behind.
	if err := saveState(dir, want[:1]); err != nil {
		t.Fatal(err)
	}
	if got, err := loadState(dir); err != nil || !reflect.DeepEqual(got, want[:1]) {
		t.Fatalf("after overwrite: got %+v, %v", got, err)
	}
	if err := saveState(dir, nil); err != nil {
		t.Fatal(err)
	}
	if got, err := loadState(dir); err != nil || len(got) != 0 {
		t.Fatalf("after emptying: got %+v, %v", got, err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("state dir holds %d entries, want only %s", len(ents), stateFileName)
	}
}

func TestStateAtomicity(t *testing.T) {
	dir := t.TempDir()
	old := []stateDisk{{ID: "0123456789ab", File: "/a.img", Via: "loop"}}
	if err := saveState(dir, old); err != nil {
		t.Fatal(err)
	}
	// A crash in the middle of a write leaves a temporary file: the state
	// read back is the old one, whole.
	if err := os.WriteFile(filepath.Join(dir, stateFileName+".tmp123"), []byte(`{"version":1,"disks":[{"fi`), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := loadState(dir); err != nil || !reflect.DeepEqual(got, old) {
		t.Fatalf("after an interrupted write: got %+v, %v", got, err)
	}
	// A write that cannot complete (the target is a directory now) leaves
	// the old state in place and no temporary file.
	blocked := t.TempDir()
	if err := os.Mkdir(filepath.Join(blocked, stateFileName), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(blocked, stateFileName, "x"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := saveState(blocked, old); err == nil {
		t.Fatal("save over a non-empty directory succeeded")
	}
	ents, _ := os.ReadDir(blocked)
	if len(ents) != 1 {
		t.Fatalf("failed save left %d entries", len(ents))
	}
}

func TestStateMalformed(t *testing.T) {
	tests := []struct{ name, body string }{
		{name: "not json", body: "hello"},
		{name: "truncated", body: `{"version":1,"disks":[`},
		{name: "wrong version", body: `{"version":99,"disks":[]}`},
		{name: "relative file", body: `{"version":1,"disks":[{"file":"a.img"}]}`},
		{name: "no file", body: `{"version":1,"disks":[{"id":"x"}]}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, stateFileName), []byte(tt.body), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := loadState(dir); !errors.Is(err, ErrBadState) {
				t.Fatalf("load %q: %v, want ErrBadState", tt.body, err)
			}
		})
	}
}

func FuzzLoadState(f *testing.F) {
	f.Add([]byte(`{"version":1,"disks":[{"id":"0123456789ab","file":"/a.img","via":"loop"}]}`))
	f.Add([]byte(`{"version":1,"disks":[]}`))
	f.Add([]byte(`{`))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, stateFileName), b, 0o600); err != nil {
			t.Fatal(err)
		}
		sds, err := loadState(dir)
		if err != nil {
			if !errors.Is(err, ErrBadState) {
				t.Fatalf("error not ErrBadState: %v", err)
			}
			return
		}
		for _, sd := range sds {
			if !filepath.IsAbs(sd.File) {
				t.Fatalf("accepted relative file %q", sd.File)
			}
		}
	})
}

func ptr(i int) *int { return &i }
