package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// freeAddr returns a loopback TCP address nobody listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// scrape returns the text of http://addr/metrics and its parsed families.
func scrape(t *testing.T, addr string) (string, map[string]*dto.MetricFamily) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d, %v\n%s", resp.StatusCode, err, body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return string(body), fams
}

// counter returns the value of the counter name with these labels (0 when
// there is none).
func counter(fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	f := fams[name]
	if f == nil {
		return 0
	}
next:
	for _, m := range f.Metric {
		have := map[string]string{}
		for _, l := range m.Label {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range labels {
			if have[k] != v {
				continue next
			}
		}
		return m.GetCounter().GetValue()
	}
	return 0
}

// TestServeMetrics: vdisk serve --metrics-listen serves /metrics that
// promtool accepts, and the write-bytes counter of the export grows by
// the 4 MiB qemu-io writes.
func TestServeMetrics(t *testing.T) {
	needTools(t, "qemu-io", "promtool")
	img := filepath.Join(t.TempDir(), "disk.img")
	addr := freeAddr(t)
	uri, stop := serving(t, "--create", "--size", "16M", "--export-name", "d", "--metrics-listen", addr, img)
	uri = strings.Replace(uri, ":///", ":///d", 1)
	_, before := scrape(t, addr)
	write := map[string]string{"export": "d", "op": "write"}
	b0 := counter(before, "vdisk_disk_bytes_total", write)
	runTool(t, "qemu-io", "-f", "raw", "-c", "write -P 7 0 4M", "-c", "read -P 7 0 4M", uri)
	text, after := scrape(t, addr)
	if got := counter(after, "vdisk_disk_bytes_total", write) - b0; got < 4<<20 {
		t.Errorf("vdisk_disk_bytes_total{export=d,op=write} grew by %v, want at least %d", got, 4<<20)
	}
	if got := counter(after, "vdisk_disk_bytes_total", map[string]string{"export": "d", "op": "read"}); got < 4<<20 {
		t.Errorf("read bytes %v, want at least %d", got, 4<<20)
	}
	for _, name := range []string{"vdisk_disk_requests_total", "vdisk_disk_request_duration_seconds",
		"vdisk_disk_requests_in_flight", "vdisk_nbd_connections_total", "vdisk_nbd_connections_open",
		"go_goroutines", "process_resident_memory_bytes"} {
		if after[name] == nil {
			t.Errorf("no %s in /metrics", name)
		}
	}
	if got := counter(after, "vdisk_nbd_handshakes_total", map[string]string{"result": "ok"}); got < 1 {
		t.Errorf("vdisk_nbd_handshakes_total{result=ok} %v after qemu-io negotiated", got)
	}
	if got := counter(after, "vdisk_nbd_connections_total", nil); got < 1 {
		t.Errorf("vdisk_nbd_connections_total %v after qemu-io connected", got)
	}
	cmd := exec.Command("promtool", "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	if code, stderr := stop(); code != 0 {
		t.Fatalf("serve exited %d: %s", code, stderr)
	}
}

// TestServeMetricsPrometheus: a real Prometheus scrapes vdisk serve and
// returns the export's write bytes through its query API.
func TestServeMetricsPrometheus(t *testing.T) {
	needTools(t, "qemu-io", "prometheus")
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	addr := freeAddr(t)
	uri, _ := serving(t, "--create", "--size", "16M", "--export-name", "p", "--metrics-listen", addr, img)
	uri = strings.Replace(uri, ":///", ":///p", 1)
	runTool(t, "qemu-io", "-f", "raw", "-c", "write 0 4M", uri)

	conf := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(conf, fmt.Appendf(nil, "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: vdisk\n    static_configs:\n      - targets: [%q]\n", addr), 0o600); err != nil {
		t.Fatal(err)
	}
	web := freeAddr(t)
	prom := exec.Command("prometheus", "--config.file="+conf, "--storage.tsdb.path="+filepath.Join(dir, "tsdb"),
		"--web.listen-address="+web)
	var log strings.Builder
	prom.Stdout, prom.Stderr = &log, &log
	if err := prom.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- prom.Wait() }()
	t.Cleanup(func() {
		prom.Process.Kill()
		<-exited
	})
	q := "http://" + web + "/api/v1/query?query=" + url.QueryEscape(`vdisk_disk_bytes_total{export="p",op="write"}`)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var got struct {
			Status string
			Data   struct {
				Result []struct {
					Value []any
				}
			}
		}
		if resp, err := http.Get(q); err == nil {
			err = json.NewDecoder(resp.Body).Decode(&got)
			resp.Body.Close()
			if err == nil && got.Status == "success" && len(got.Data.Result) == 1 && len(got.Data.Result[0].Value) == 2 {
				if v, _ := got.Data.Result[0].Value[1].(string); v != "4194304" {
					t.Fatalf("Prometheus has write bytes %q, want 4194304", v)
				}
				return
			}
		}
		select {
		case err := <-exited:
			t.Fatalf("prometheus exited: %v\n%s", err, log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("Prometheus never returned the series\n%s", log.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}
