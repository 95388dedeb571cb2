package cli

import (
	"encoding/json"
	"testing"
)

// TestToolRecords: commit, rebase and dd --json print what they did, and
// map --json is map --output=json.
func TestToolRecords(t *testing.T) {
	needTools(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	chain(t, dir)
	qemuIn(t, dir, "cp", "top.qcow2", "flat.qcow2")

	_, mapOut, _ := inDir(t, dir, "map", "--output=json", "top.qcow2")
	if code, out, errs := inDir(t, dir, "map", "--json", "top.qcow2"); code != 0 || out != mapOut {
		t.Fatalf("map --json: exit %d %q %q, want %q", code, out, errs, mapOut)
	}

	var rb rebaseRecord
	code, out, errs := inDir(t, dir, "rebase", "--json", "-b", "", "flat.qcow2")
	if code != 0 || json.Unmarshal([]byte(out), &rb) != nil {
		t.Fatalf("rebase --json: exit %d %q %q", code, out, errs)
	}
	// base.qcow2 holds 2 MiB of 0x11 at 0; top covers 64k of zeroes at 0
	// and 1M..3M: what the top left to its backing file is 64k..1M.
	if rb != (rebaseRecord{Image: "flat.qcow2", Data: 1<<20 - 64<<10}) {
		t.Fatalf("rebase --json: %+v", rb)
	}

	var cm commitRecord
	code, out, errs = inDir(t, dir, "commit", "--json", "top.qcow2")
	if code != 0 || json.Unmarshal([]byte(out), &cm) != nil {
		t.Fatalf("commit --json: exit %d %q %q", code, out, errs)
	}
	if cm != (commitRecord{Image: "top.qcow2", Base: "base.qcow2", Data: 2 << 20, Zero: 64 << 10, Emptied: true}) {
		t.Fatalf("commit --json: %+v", cm)
	}

	var dd ddRecord
	code, out, errs = inDir(t, dir, "dd", "--json", "if=base.qcow2", "of=part.raw", "bs=1M", "skip=1", "count=3")
	if code != 0 || json.Unmarshal([]byte(out), &dd) != nil {
		t.Fatalf("dd --json: exit %d %q %q", code, out, errs)
	}
	if dd != (ddRecord{In: "base.qcow2", Out: "part.raw", InOffset: 1 << 20, Bytes: 2 << 20, Created: true}) {
		t.Fatalf("dd --json: %+v", dd)
	}
}
