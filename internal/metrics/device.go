package metrics

import (
	"math/bits"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"vdisk/internal/blockdev"
)

// The latency histogram's buckets: upper bounds of 10 µs * 4^i, i <
// nBuckets (10 µs to about 42 s), then +Inf. bucketOf finds a duration's
// bucket without a search.
const (
	nBuckets   = 12
	firstBound = 10 * time.Microsecond
)

var bucketBounds = func() []float64 {
	b := make([]float64, nBuckets)
	for i := range b {
		b[i] = (firstBound * time.Duration(1<<(2*i))).Seconds()
	}
	return b
}()

// bucketOf returns the index of the first bucket whose bound is >= d
// (nBuckets: above every bound).
func bucketOf(d time.Duration) int {
	if d <= firstBound {
		return 0
	}
	// The smallest i with 10µs*4^i >= d: ceil(log4(d/10µs)).
	q := uint64((d - 1) / firstBound) // d/10µs rounded up, minus one
	i := (bits.Len64(q) + 1) / 2
	return min(i, nBuckets)
}

// opStats are one operation's figures for one disk: plain atomic
// integers, read at scrape time, so that a request costs a handful of
// uncontended-in-the-common-case adds and no floating point CAS loops.
type opStats struct {
	buckets  [nBuckets + 1]atomic.Uint64 // the last one is +Inf
	sumNanos atomic.Uint64
	bytes    atomic.Uint64
	_        [64]byte // keep the next op's figures off this cache line
}

// counted is the decorator: every request is counted, timed, and its
// error mapped to the errno a client sees (blockdev.Errno).
type counted struct {
	inner   blockdev.Device
	r       *Registry
	values  []string
	started atomic.Uint64
	_       [56]byte
	stats   [len(ops)]opStats
}

// Indexes of ops.
const (
	iRead = iota
	iWrite
	iFlush
	iTrim
	iZero
)

// Device returns d counted under the label values (one per label name the
// registry was made with). The result has the optional capabilities d has
// (Trimmer, ZeroWriter, Extenter), and answers Info and Depth as d does;
// it is not a Resizer: resize the device underneath. Closing it closes d
// (call Forget to drop the series). Wrapping a second device under the
// same label values replaces the first in the metrics.
func (r *Registry) Device(d blockdev.Device, values ...string) blockdev.Device {
	c := &counted{inner: d, r: r, values: append([]string(nil), values...)}
	r.devices.add(c)
	_, t := d.(blockdev.Trimmer)
	_, z := d.(blockdev.ZeroWriter)
	_, e := d.(blockdev.Extenter)
	switch {
	case t && z && e:
		return struct {
			*counted
			trimmer
			zeroWriter
			extenter
		}{c, trimmer{c}, zeroWriter{c}, extenter{c}}
	case t && z:
		return struct {
			*counted
			trimmer
			zeroWriter
		}{c, trimmer{c}, zeroWriter{c}}
	case t && e:
		return struct {
			*counted
			trimmer
			extenter
		}{c, trimmer{c}, extenter{c}}
	case z && e:
		return struct {
			*counted
			zeroWriter
			extenter
		}{c, zeroWriter{c}, extenter{c}}
	case t:
		return struct {
			*counted
			trimmer
		}{c, trimmer{c}}
	case z:
		return struct {
			*counted
			zeroWriter
		}{c, zeroWriter{c}}
	case e:
		return struct {
			*counted
			extenter
		}{c, extenter{c}}
	}
	return c
}

// epoch is the origin of the requests' start times. time.Since of a time
// with a monotonic reading reads only the monotonic clock, where time.Now
// reads the wall clock as well: one clock read per begin and end.
var epoch = time.Now()

// begin marks a request in flight and returns its start.
func (c *counted) begin() time.Duration {
	c.started.Add(1)
	return time.Since(epoch)
}

// end counts a request of op, of n bytes, that began at start. A request
// is in flight from begin until its bucket is counted here.
func (c *counted) end(op int, start time.Duration, n int64, err error) {
	d := max(time.Since(epoch)-start, 0)
	s := &c.stats[op]
	if n > 0 {
		s.bytes.Add(uint64(n))
	}
	s.sumNanos.Add(uint64(d))
	s.buckets[bucketOf(d)].Add(1)
	if err != nil {
		c.fail(ops[op], err)
	}
}

// fail counts an error by its errno; the label is the errno's name
// (EIO, ENOSPC, ...) or its number when it has none.
func (c *counted) fail(op string, err error) {
	lv := append(append([]string(nil), c.values...), op, errnoName(blockdev.Errno(err)))
	c.r.errors.WithLabelValues(lv...).Inc()
}

func (c *counted) ReadAt(p []byte, off int64) (int, error) {
	start := c.begin()
	n, err := c.inner.ReadAt(p, off)
	c.end(iRead, start, int64(n), err)
	return n, err
}

func (c *counted) WriteAt(p []byte, off int64) (int, error) {
	start := c.begin()
	n, err := c.inner.WriteAt(p, off)
	c.end(iWrite, start, int64(n), err)
	return n, err
}

func (c *counted) Flush() error {
	start := c.begin()
	err := c.inner.Flush()
	c.end(iFlush, start, 0, err)
	return err
}

func (c *counted) Size() int64  { return c.inner.Size() }
func (c *counted) Close() error { return c.inner.Close() }

// Info answers as the device underneath.
func (c *counted) Info() blockdev.Info { return blockdev.InfoOf(c.inner) }

// Depth answers as the device underneath.
func (c *counted) Depth(off, n int64) ([]blockdev.DepthExtent, error) {
	return blockdev.Depths(c.inner, off, n)
}

// Unwrap returns the device underneath.
func (c *counted) Unwrap() blockdev.Device { return c.inner }

type trimmer struct{ c *counted }

func (t trimmer) Trim(off, n int64) error {
	start := t.c.begin()
	err := t.c.inner.(blockdev.Trimmer).Trim(off, n)
	done := n
	if err != nil {
		done = 0
	}
	t.c.end(iTrim, start, done, err)
	return err
}

type zeroWriter struct{ c *counted }

func (z zeroWriter) WriteZeroes(off, n int64, mayTrim bool) error {
	start := z.c.begin()
	err := z.c.inner.(blockdev.ZeroWriter).WriteZeroes(off, n, mayTrim)
	done := n
	if err != nil {
		done = 0
	}
	z.c.end(iZero, start, done, err)
	return err
}

type extenter struct{ c *counted }

func (e extenter) Extents(off, n int64) ([]blockdev.Extent, error) {
	return e.c.inner.(blockdev.Extenter).Extents(off, n)
}

// deviceCollector reports the counted devices' figures at scrape time.
type deviceCollector struct {
	requests, bytes, latency, inFlight *prometheus.Desc

	mu   sync.Mutex
	devs map[string]*counted // by the joined label values
}

func newDeviceCollector(labels []string) *deviceCollector {
	withOp := append(append([]string(nil), labels...), "op")
	return &deviceCollector{
		requests: prometheus.NewDesc("vdisk_disk_requests_total",
			"I/O requests a disk served, by operation (errors included).", withOp, nil),
		bytes: prometheus.NewDesc("vdisk_disk_bytes_total",
			"Bytes a disk's requests covered, by operation (read, write, trim, write_zeroes).", withOp, nil),
		latency: prometheus.NewDesc("vdisk_disk_request_duration_seconds",
			"How long a disk took to serve a request, by operation.", withOp, nil),
		inFlight: prometheus.NewDesc("vdisk_disk_requests_in_flight",
			"Requests a disk is serving now.", labels, nil),
		devs: map[string]*counted{},
	}
}

func (dc *deviceCollector) add(c *counted) {
	dc.mu.Lock()
	defer dc.mu.Unlock()
	dc.devs[key(c.values)] = c
}

func (dc *deviceCollector) remove(values []string) {
	dc.mu.Lock()
	defer dc.mu.Unlock()
	delete(dc.devs, key(values))
}

func (dc *deviceCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- dc.requests
	ch <- dc.bytes
	ch <- dc.latency
	ch <- dc.inFlight
}

func (dc *deviceCollector) Collect(ch chan<- prometheus.Metric) {
	dc.mu.Lock()
	devs := make([]*counted, 0, len(dc.devs))
	for _, c := range dc.devs {
		devs = append(devs, c)
	}
	dc.mu.Unlock()
	for _, c := range devs {
		var finished uint64
		for i, op := range ops {
			s := &c.stats[i]
			lv := append(append([]string(nil), c.values...), op)
			buckets := make(map[float64]uint64, nBuckets)
			var cum uint64
			for b := range nBuckets {
				cum += s.buckets[b].Load()
				buckets[bucketBounds[b]] = cum
			}
			count := cum + s.buckets[nBuckets].Load()
			finished += count
			ch <- prometheus.MustNewConstMetric(dc.requests, prometheus.CounterValue, float64(count), lv...)
			if op != OpFlush {
				ch <- prometheus.MustNewConstMetric(dc.bytes, prometheus.CounterValue, float64(s.bytes.Load()), lv...)
			}
			ch <- prometheus.MustNewConstHistogram(dc.latency, count, float64(s.sumNanos.Load())/1e9, buckets, lv...)
		}
		// Read after the finished counts: a request is counted started
		// before it is counted finished, so this is never negative.
		started := c.started.Load()
		ch <- prometheus.MustNewConstMetric(dc.inFlight, prometheus.GaugeValue, float64(started-min(finished, started)), c.values...)
	}
}

// errnoName is the symbolic name of an errno, for the errno label.
func errnoName(e syscall.Errno) string {
	if n, ok := errnoNames[e]; ok {
		return n
	}
	return strconv.Itoa(int(e))
}

var errnoNames = map[syscall.Errno]string{
	syscall.EPERM: "EPERM", syscall.EIO: "EIO", syscall.ENOMEM: "ENOMEM", syscall.EINVAL: "EINVAL",
	syscall.ENOSPC: "ENOSPC", syscall.EOVERFLOW: "EOVERFLOW", syscall.EOPNOTSUPP: "EOPNOTSUPP",
	syscall.ESHUTDOWN: "ESHUTDOWN", syscall.EBUSY: "EBUSY", syscall.EROFS: "EROFS", syscall.EAGAIN: "EAGAIN",
	syscall.ETIMEDOUT: "ETIMEDOUT", syscall.EDQUOT: "EDQUOT", syscall.ENODEV: "ENODEV", syscall.ENXIO: "ENXIO",
}
