package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDaemonMetrics: vdisk daemon --metrics-listen counts the I/O of a
// disk it serves itself (here through FUSE, with a loop device on top):
// after dd writes 4 MiB to the device, the disk's write bytes grew by at
// least that, under its id, format and via labels; promtool accepts the
// page; closing the disk drops its series.
func TestDaemonMetrics(t *testing.T) {
	needKernel(t)
	needTools(t, "promtool", "dd")
	base, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(base, "run", "vdisk.sock")
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	var stderr bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, []string{"daemon", "--socket", socket, "--state-dir", filepath.Join(base, "state"), "--metrics-listen", addr},
			strings.NewReader(""), &bytes.Buffer{}, &stderr)
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("daemon exited %d: %s", code, stderr.String())
		}
	})
	img := filepath.Join(base, "d.img")
	out := mustRun(t, "open", "--socket", socket, img, "--size", "16M", "--via", "fuse", "--json")
	var rec struct{ ID, Device, Format, Via string }
	if err := json.Unmarshal([]byte(out), &rec); err != nil || rec.Device == "" {
		t.Fatalf("open --json: %v\n%s", err, out)
	}
	defer run(t, "close", "--socket", socket, rec.ID)
	labels := map[string]string{"id": rec.ID, "format": rec.Format, "via": "fuse", "op": "write"}
	_, before := scrape(t, addr)
	b0 := counter(before, "vdisk_disk_bytes_total", labels)
	if o, err := exec.Command("dd", "if=/dev/urandom", "of="+rec.Device, "bs=1M", "count=4", "oflag=direct", "conv=fsync").CombinedOutput(); err != nil {
		t.Fatalf("dd: %v\n%s", err, o)
	}
	text, after := scrape(t, addr)
	if got := counter(after, "vdisk_disk_bytes_total", labels) - b0; got < 4<<20 {
		t.Errorf("write bytes of %s grew by %v, want at least %d\n%s", rec.ID, got, 4<<20, text)
	}
	cmd := exec.Command("promtool", "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	if o, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, o)
	}
	mustRun(t, "close", "--socket", socket, rec.ID)
	deadline := time.Now().Add(30 * time.Second)
	for {
		text, _ := scrape(t, addr)
		if !strings.Contains(text, `id="`+rec.ID+`"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("series of closed disk %s remain", rec.ID)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
