package metrics

import (
	"context"
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"vdisk/internal/blockdev"
	"vdisk/internal/storage/objstore"
)

// readOnlyBare is a Device with no optional capability.
type readOnlyBare struct{ blockdev.Device }

func TestDeviceCounts(t *testing.T) {
	r := New("id", "format", "via")
	d := r.Device(blockdev.NewMem(1<<20), "d1", "raw", "nbd")
	if _, ok := d.(blockdev.Trimmer); !ok {
		t.Error("the decorator of a Trimmer is not a Trimmer")
	}
	if _, ok := d.(blockdev.ZeroWriter); !ok {
		t.Error("the decorator of a ZeroWriter is not a ZeroWriter")
	}
	if _, ok := d.(blockdev.Extenter); !ok {
		t.Error("the decorator of an Extenter is not an Extenter")
	}
	buf := make([]byte, 4096)
	for range 3 {
		if _, err := d.WriteAt(buf, 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.ReadAt(buf, 8192); err != nil {
		t.Fatal(err)
	}
	if err := blockdev.Trim(d, 0, 65536); err != nil {
		t.Fatal(err)
	}
	if err := blockdev.WriteZeroes(d, 0, 512, false); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	// Past the end: an error the client sees as EINVAL.
	if _, err := d.ReadAt(buf, 1<<20); err == nil {
		t.Fatal("a read past the end succeeded")
	}
	want := map[string]float64{"read": 2, "write": 3, "trim": 1, "write_zeroes": 1, "flush": 1}
	for op, n := range want {
		lv := map[string]string{"id": "d1", "format": "raw", "via": "nbd", "op": op}
		if got := value(t, r, "vdisk_disk_requests_total", lv); got != n {
			t.Errorf("%s requests %v, want %v", op, got, n)
		}
		if got := value(t, r, "vdisk_disk_request_duration_seconds", lv); got != n {
			t.Errorf("%s latency count %v, want %v", op, got, n)
		}
	}
	bytes := map[string]float64{"read": 4096, "write": 3 * 4096, "trim": 65536, "write_zeroes": 512}
	for op, n := range bytes {
		if got := value(t, r, "vdisk_disk_bytes_total", map[string]string{"id": "d1", "op": op}); got != n {
			t.Errorf("%s bytes %v, want %v", op, got, n)
		}
	}
	if got := testutil.ToFloat64(r.errors.WithLabelValues("d1", "raw", "nbd", "read", "EINVAL")); got != 1 {
		t.Errorf("read EINVAL errors %v, want 1", got)
	}
	if got := value(t, r, "vdisk_disk_requests_in_flight", map[string]string{"id": "d1"}); got != 0 {
		t.Errorf("in flight %v after every request returned", got)
	}
	if problems, err := testutil.GatherAndLint(r.reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %+v", err, problems)
	}
	r.Forget("d1", "raw", "nbd")
	if n := testutil.CollectAndCount(r.devices); n != 0 {
		t.Errorf("%d request series left after Forget", n)
	}
	if n := testutil.CollectAndCount(r.errors); n != 0 {
		t.Errorf("%d error series left after Forget", n)
	}
}

func TestDeviceKeepsCapsAbsent(t *testing.T) {
	r := New("export")
	d := r.Device(readOnlyBare{blockdev.NewMem(4096)}, "e")
	if _, ok := d.(blockdev.Trimmer); ok {
		t.Error("the decorator of a device without Trim is a Trimmer")
	}
	if _, ok := d.(blockdev.ZeroWriter); ok {
		t.Error("the decorator of a device without WriteZeroes is a ZeroWriter")
	}
	if err := blockdev.Trim(d, 0, 512); !errors.Is(err, blockdev.ErrNotSupported) {
		t.Errorf("Trim: %v, want ErrNotSupported", err)
	}
}

func TestStoreAndDiskGauges(t *testing.T) {
	r := New("id")
	st := objstore.NewObserved(objstore.NewMem(), r.StoreObserver())
	ctx := context.Background()
	if _, err := st.Put(ctx, "k", []byte("hello"), objstore.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.Get(ctx, "missing", 0, -1); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatal(err)
	}
	if _, _, err := st.Get(ctx, "k", 0, -1); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		op, status string
		n          float64
	}{{"put", "ok", 1}, {"get", "not_found", 1}, {"get", "ok", 1}} {
		if got := testutil.ToFloat64(r.storeRequests.WithLabelValues(c.op, c.status)); got != c.n {
			t.Errorf("%s %s: %v, want %v", c.op, c.status, got, c.n)
		}
	}
	if got := testutil.ToFloat64(r.storeBytes.WithLabelValues("written")); got != 5 {
		t.Errorf("written bytes %v", got)
	}
	var fail error
	r.Disk(DiskSource{
		Stats: func() CacheFigures {
			return CacheFigures{DirtyBytes: 100, CachedBytes: 200, StoredChunks: 3,
				LeaseRenewals: 7, LeaseRenewalFailures: 1, LeaseValidUntil: time.Now().Add(time.Hour)}
		},
		Degraded: func() error { return fail },
	}, "s3disk")
	srv := httptest.NewServer(r.Handler())
	defer srv.Close()
	get := func() string {
		resp, err := srv.Client().Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	body := get()
	for _, line := range []string{`vdisk_cache_dirty_bytes{id="s3disk"} 100`, `vdisk_cache_clean_bytes{id="s3disk"} 200`,
		`vdisk_objstore_chunks{id="s3disk"} 3`, `vdisk_degraded{id="s3disk"} 0`,
		`vdisk_lease_renewals_total{id="s3disk",result="ok"} 7`, `vdisk_lease_renewals_total{id="s3disk",result="failed"} 1`} {
		if !strings.Contains(body, line+"\n") {
			t.Errorf("no %q in\n%s", line, body)
		}
	}
	if !strings.Contains(body, `vdisk_lease_expiry_seconds{id="s3disk"} 3`) { // 3599.x
		t.Errorf("no lease expiry of about an hour in\n%s", body)
	}
	r.StoreRetries()()
	if !strings.Contains(get(), "vdisk_objstore_retries_total 1\n") {
		t.Errorf("a retry is not counted")
	}
	obs := r.NBDObserver()
	obs("handshake_ok")
	obs("handshake_failed")
	obs("tls_ok")
	if body := get(); !strings.Contains(body, `vdisk_nbd_handshakes_total{result="ok"} 1`+"\n") ||
		!strings.Contains(body, `vdisk_nbd_handshakes_total{result="failed"} 1`+"\n") ||
		!strings.Contains(body, `vdisk_nbd_tls_handshakes_total{result="ok"} 1`+"\n") {
		t.Errorf("NBD handshake counts missing in\n%s", body)
	}
	fail = errors.New("store unreachable")
	if body := get(); !strings.Contains(body, `vdisk_degraded{id="s3disk"} 1`+"\n") {
		t.Errorf("degraded not 1 after the store failed")
	}
	r.Forget("s3disk")
	if body := get(); strings.Contains(body, "s3disk") {
		t.Errorf("series of a forgotten disk remain")
	}
}

// value returns the value of the series name whose labels include want
// (a histogram's count), or -1 when there is none.
func value(t *testing.T, r *Registry, name string, want map[string]string) float64 {
	t.Helper()
	fams, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.Metric {
			have := map[string]string{}
			for _, l := range m.Label {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if have[k] != v {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return -1
}

func TestBucketOf(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want int
	}{{0, 0}, {time.Microsecond, 0}, {10 * time.Microsecond, 0}, {10*time.Microsecond + 1, 1},
		{40 * time.Microsecond, 1}, {40*time.Microsecond + 1, 2}, {160 * time.Microsecond, 2},
		{time.Millisecond, 4}, {42 * time.Second, 12}, {time.Hour, 12}} {
		if got := bucketOf(c.d); got != c.want {
			t.Errorf("bucketOf(%v) = %d, want %d", c.d, got, c.want)
		}
	}
	// Every duration lands in the first bucket whose bound holds it.
	for d := time.Duration(1); d < 50*time.Second; d = d*3/2 + 1 {
		i := bucketOf(d)
		if i < nBuckets && d.Seconds() > bucketBounds[i]*(1+1e-9) {
			t.Fatalf("bucketOf(%v) = %d, bound %v", d, i, bucketBounds[i])
		}
		if i > 0 && d.Seconds() <= bucketBounds[i-1] {
			t.Fatalf("bucketOf(%v) = %d, but bucket %d (bound %v) holds it", d, i, i-1, bucketBounds[i-1])
		}
	}
}
