package loop

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// losetupDevice is one device of `losetup --json --list`.
type losetupDevice struct {
	Name       string `json:"name"`
	AutoClear  bool   `json:"autoclear"`
	BackFile   string `json:"back-file"`
	BackIno    uint64 `json:"back-ino"`
	BackMajMin string `json:"back-maj:min"`
	DIO        bool   `json:"dio"`
	LogSec     uint32 `json:"log-sec"`
	PartScan   bool   `json:"partscan"`
	RO         bool   `json:"ro"`
	MajMin     string `json:"maj:min"`
}

// losetupList asks util-linux's losetup about path.
func losetupList(t *testing.T, path string) losetupDevice {
	t.Helper()
	out, err := exec.Command("losetup", "--json", "--list", "--output",
		"NAME,AUTOCLEAR,BACK-FILE,BACK-INO,BACK-MAJ:MIN,DIO,LOG-SEC,PARTSCAN,RO,MAJ:MIN", path).Output()
	if err != nil {
		t.Fatalf("losetup --list %s: %v", path, err)
	}
	var list struct {
		Devices []losetupDevice `json:"loopdevices"`
	}
	if err := json.Unmarshal(out, &list); err != nil || len(list.Devices) != 1 {
		t.Fatalf("losetup output %s: %v", out, err)
	}
	return list.Devices[0]
}

// majMin formats a device number as losetup prints it, without padding.
func majMin(major, minor uint32) string { return fmt.Sprintf("%d:%d", major, minor) }

func TestLookupAgreesWithLosetup(t *testing.T) {
	requireLoop(t)
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Skip("losetup (util-linux) not installed")
	}
	tests := []struct {
		name string
		opt  Options
	}{
		{name: "plain", opt: Options{}},
		{name: "read-only direct partscan", opt: Options{ReadOnly: true, DirectIO: true, PartScan: true}},
		{name: "4k blocks", opt: Options{BlockSize: 4096, DirectIO: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := sparseFile(t, 4<<20)
			d := attach(t, f, tt.opt)
			l := losetupList(t, d.Path)
			got := losetupDevice{
				Name: d.Path, AutoClear: d.AutoClear, BackFile: d.BackingFile, BackIno: d.BackingInode,
				BackMajMin: majMin(unix.Major(d.BackingDev), unix.Minor(d.BackingDev)),
				DIO:        d.DirectIO, LogSec: d.BlockSize, PartScan: d.PartScan, RO: d.ReadOnly,
				MajMin: majMin(d.Major, d.Minor),
			}
			l.BackMajMin = strings.TrimSpace(l.BackMajMin)
			l.MajMin = strings.TrimSpace(l.MajMin)
			if got != l {
				t.Fatalf("Lookup says %+v\nlosetup says %+v", got, l)
			}
		})
	}
}

func TestFindDeviceAttachedByLosetup(t *testing.T) {
	requireLoop(t)
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Skip("losetup (util-linux) not installed")
	}
	f := sparseFile(t, 1<<20)
	out, err := exec.Command("losetup", "--find", "--show", f.Name()).Output()
	if err != nil {
		t.Fatalf("losetup --find: %v", err)
	}
	path := strings.TrimSpace(string(out))
	d, err := Lookup(path)
	if err != nil {
		exec.Command("losetup", "-d", path).Run()
		t.Fatal(err)
	}
	t.Cleanup(func() { cleanupDetach(t, d) })
	found, err := FindByBackingFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 1 || found[0].Path != path {
		t.Fatalf("FindByBackingFile = %v, want [%s]", found, path)
	}
	if err := found[0].Detach(); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command("losetup", "--associated", f.Name()).Output()
	if err != nil || len(out) != 0 {
		t.Fatalf("losetup --associated after Detach: %q, %v; want nothing", out, err)
	}
}
