// Package metrics exposes what vdisk does in the Prometheus text format:
// per-disk I/O counters, a latency histogram, requests in flight and errors
// by errno (Device, a blockdev.Device decorator); object store requests
// (Store, an objstore.Store decorator); the cache and health figures of
// disks in an object store (Disk, read at scrape time); and the standard Go
// and process collectors.
//
// A Registry is made with the names of the labels that identify a disk
// (the daemon: id, format, via; vdisk serve: export, format), and every
// disk's series carry those labels. Counting costs a few atomic adds and
// two clock reads per request: each disk keeps its figures in atomic
// integers of its own, turned into metrics only when scraped.
package metrics

import (
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Operation names, the "op" label of the I/O series.
const (
	OpRead        = "read"
	OpWrite       = "write"
	OpFlush       = "flush"
	OpTrim        = "trim"
	OpWriteZeroes = "write_zeroes"
)

var ops = [...]string{OpRead, OpWrite, OpFlush, OpTrim, OpWriteZeroes}

// Registry holds vdisk's metrics. Its methods are safe for concurrent use.
type Registry struct {
	reg    *prometheus.Registry
	labels []string

	devices *deviceCollector
	errors  *prometheus.CounterVec

	storeRequests *prometheus.CounterVec
	storeRetries  prometheus.Counter
	storeBytes    *prometheus.CounterVec

	disks *diskCollector
	conns connMetrics
	nbd   nbdEvents
}

// New returns a registry whose disks are identified by labels (label
// names such as "id", "format", "via"), with the Go and process
// collectors registered.
func New(labels ...string) *Registry {
	r := &Registry{reg: prometheus.NewRegistry(), labels: append([]string(nil), labels...)}
	withOp := append(append([]string(nil), labels...), "op")
	r.devices = newDeviceCollector(labels)
	r.errors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "vdisk_disk_errors_total",
		Help: "Requests that failed, by operation and the errno the client was given.",
	}, append(withOp, "errno"))
	r.storeRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "vdisk_objstore_requests_total",
		Help: "Object store requests, by operation and outcome (ok, not_found, precondition_failed, error).",
	}, []string{"op", "status"})
	r.storeBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "vdisk_objstore_bytes_total",
		Help: "Object payload bytes moved, by direction (read: GET, written: PUT).",
	}, []string{"direction"})
	r.storeRetries = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "vdisk_objstore_retries_total",
		Help: "Object store requests retried by the client (each retry counted once).",
	})
	r.disks = newDiskCollector(labels)
	r.reg.MustRegister(r.devices, r.errors,
		r.storeRequests, r.storeBytes, r.storeRetries, r.disks,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// Gatherer is the registry, for tests and for serving it elsewhere.
func (r *Registry) Gatherer() prometheus.Gatherer { return r.reg }

// Handler serves the metrics in the Prometheus text format (GET /metrics).
func (r *Registry) Handler() http.Handler {
	return promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Forget drops every series of the disk with these label values: call it
// when the disk is closed. Counters of a disk opened again start from zero,
// which Prometheus's rate() reads as a reset.
func (r *Registry) Forget(values ...string) {
	r.devices.remove(values)
	r.errors.DeletePartialMatch(r.match(values))
	r.disks.remove(values)
}

func (r *Registry) match(values []string) prometheus.Labels {
	m := prometheus.Labels{}
	for i, n := range r.labels {
		if i < len(values) {
			m[n] = values[i]
		}
	}
	return m
}

// diskCollector reports the object store figures of the disks that have
// them, read when scraped.
type diskCollector struct {
	dirty, clean, stored, renewals, expiry, degraded *prometheus.Desc

	mu    sync.Mutex
	disks map[string]diskSource // by the joined label values
}

// DiskSource is what an object-store disk reports: its cache (Stats) and
// why it cannot take writes (Degraded, nil when healthy). Either may be
// nil.
type DiskSource struct {
	Stats    func() CacheFigures
	Degraded func() error
}

// CacheFigures are an object-store disk's cache figures (the stack's
// StoreStats, copied so that metrics knows no layer).
type CacheFigures struct {
	DirtyBytes, CachedBytes, StoredChunks int64
	// LeaseRenewals and LeaseRenewalFailures count the writer's lease
	// renewals; LeaseValidUntil is when its lease runs out (zero for a
	// reader).
	LeaseRenewals, LeaseRenewalFailures int64
	LeaseValidUntil                     time.Time
}

type diskSource struct {
	values []string
	DiskSource
}

func newDiskCollector(labels []string) *diskCollector {
	return &diskCollector{
		dirty: prometheus.NewDesc("vdisk_cache_dirty_bytes",
			"Memory of written chunks not yet stored in the object store.", labels, nil),
		clean: prometheus.NewDesc("vdisk_cache_clean_bytes",
			"Memory of clean cached chunk data.", labels, nil),
		stored: prometheus.NewDesc("vdisk_objstore_chunks",
			"Chunk objects the image has in the object store.", labels, nil),
		renewals: prometheus.NewDesc("vdisk_lease_renewals_total",
			"Renewals of the disk's object-store lease, by result.", append(append([]string(nil), labels...), "result"), nil),
		expiry: prometheus.NewDesc("vdisk_lease_expiry_seconds",
			"Seconds until the disk's object-store lease runs out unless renewed.", labels, nil),
		degraded: prometheus.NewDesc("vdisk_degraded",
			"1 when the disk's object store cannot take writes now (unreachable, lease lost or fenced), else 0.", labels, nil),
		disks: map[string]diskSource{},
	}
}

func key(values []string) string {
	k := ""
	for _, v := range values {
		k += v + "\x00"
	}
	return k
}

func (c *diskCollector) add(values []string, s DiskSource) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.disks[key(values)] = diskSource{values: append([]string(nil), values...), DiskSource: s}
}

func (c *diskCollector) remove(values []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.disks, key(values))
}

func (c *diskCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.dirty
	ch <- c.clean
	ch <- c.stored
	ch <- c.renewals
	ch <- c.expiry
	ch <- c.degraded
}

func (c *diskCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	all := make([]diskSource, 0, len(c.disks))
	for _, d := range c.disks {
		all = append(all, d)
	}
	c.mu.Unlock()
	for _, d := range all {
		if d.Stats != nil {
			st := d.Stats()
			ch <- prometheus.MustNewConstMetric(c.dirty, prometheus.GaugeValue, float64(st.DirtyBytes), d.values...)
			ch <- prometheus.MustNewConstMetric(c.clean, prometheus.GaugeValue, float64(st.CachedBytes), d.values...)
			ch <- prometheus.MustNewConstMetric(c.stored, prometheus.GaugeValue, float64(st.StoredChunks), d.values...)
			if !st.LeaseValidUntil.IsZero() {
				ch <- prometheus.MustNewConstMetric(c.renewals, prometheus.CounterValue, float64(st.LeaseRenewals), slices.Concat(d.values, []string{"ok"})...)
				ch <- prometheus.MustNewConstMetric(c.renewals, prometheus.CounterValue, float64(st.LeaseRenewalFailures), slices.Concat(d.values, []string{"failed"})...)
				ch <- prometheus.MustNewConstMetric(c.expiry, prometheus.GaugeValue, time.Until(st.LeaseValidUntil).Seconds(), d.values...)
			}
		}
		if d.Degraded != nil {
			v := 0.0
			if d.Degraded() != nil {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(c.degraded, prometheus.GaugeValue, v, d.values...)
		}
	}
}

// Disk reports the object store figures of the disk with these label
// values until Forget.
func (r *Registry) Disk(s DiskSource, values ...string) { r.disks.add(values, s) }
