package metrics

import (
	"strconv"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"vdisk/internal/blockdev"
)

// opMetrics are one operation's series of one disk, looked up once.
type opMetrics struct {
	op       string
	requests prometheus.Counter
	bytes    prometheus.Counter
	latency  prometheus.Observer
}

// counted is the decorator: every request is counted, timed, and its
// error mapped to the errno a client sees (blockdev.Errno).
type counted struct {
	inner                          blockdev.Device
	r                              *Registry
	values                         []string
	inFlight                       prometheus.Gauge
	read, write, flush, trim, zero opMetrics
}

func (r *Registry) opMetrics(values []string, op string) opMetrics {
	lv := append(append([]string(nil), values...), op)
	return opMetrics{op: op, requests: r.requests.WithLabelValues(lv...), bytes: r.bytes.WithLabelValues(lv...),
		latency: r.latency.WithLabelValues(lv...)}
}

// Device returns d counted under the label values (one per label name the
// registry was made with). The result has the optional capabilities d has
// (Trimmer, ZeroWriter, Extenter), and answers Info and Depth as d does;
// it is not a Resizer: resize the device underneath. Closing it closes d
// (call Forget to drop the series).
func (r *Registry) Device(d blockdev.Device, values ...string) blockdev.Device {
	c := &counted{inner: d, r: r, values: append([]string(nil), values...), inFlight: r.inFlight.WithLabelValues(values...)}
	c.read, c.write, c.flush = r.opMetrics(values, OpRead), r.opMetrics(values, OpWrite), r.opMetrics(values, OpFlush)
	c.trim, c.zero = r.opMetrics(values, OpTrim), r.opMetrics(values, OpWriteZeroes)
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

// begin marks a request in flight and returns its start.
func (c *counted) begin() time.Time {
	c.inFlight.Inc()
	return time.Now()
}

// end counts a request of n bytes that began at start.
func (c *counted) end(m *opMetrics, start time.Time, n int64, err error) {
	m.latency.Observe(time.Since(start).Seconds())
	c.inFlight.Dec()
	m.requests.Inc()
	if n > 0 {
		m.bytes.Add(float64(n))
	}
	if err != nil {
		c.fail(m.op, err)
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
	c.end(&c.read, start, int64(n), err)
	return n, err
}

func (c *counted) WriteAt(p []byte, off int64) (int, error) {
	start := c.begin()
	n, err := c.inner.WriteAt(p, off)
	c.end(&c.write, start, int64(n), err)
	return n, err
}

func (c *counted) Flush() error {
	start := c.begin()
	err := c.inner.Flush()
	c.end(&c.flush, start, 0, err)
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
	t.c.end(&t.c.trim, start, done, err)
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
	z.c.end(&z.c.zero, start, done, err)
	return err
}

type extenter struct{ c *counted }

func (e extenter) Extents(off, n int64) ([]blockdev.Extent, error) {
	return e.c.inner.(blockdev.Extenter).Extents(off, n)
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
