package cli

import (
	"net"

	"github.com/spf13/pflag"

	"vdisk/internal/blockdev"
	"vdisk/internal/metrics"
)

// serveMetrics counts what vdisk serve's exports do, when --metrics-listen
// asks for it (nil otherwise: nothing is counted).
type serveMetrics struct {
	reg  *metrics.Registry
	stop func()
}

func addServeMetricsFlag(f *pflag.FlagSet, addr *string) {
	f.StringVar(addr, "metrics-listen", "", "serve Prometheus metrics at http://HOST:PORT/metrics (off by default)")
}

// startServeMetrics serves the metrics on addr; with addr empty it does
// nothing and returns nil.
func startServeMetrics(e *env, addr string) (*serveMetrics, error) {
	if addr == "" {
		return nil, nil
	}
	reg := metrics.New("export")
	stop, err := reg.Serve(addr, e.log)
	if err != nil {
		return nil, err
	}
	return &serveMetrics{reg: reg, stop: stop}, nil
}

// device returns dev counted as export name (dev itself without metrics).
func (m *serveMetrics) device(dev blockdev.Device, name string) blockdev.Device {
	if m == nil {
		return dev
	}
	return m.reg.Device(dev, name)
}

// listener returns ln with its connections counted (ln itself without
// metrics).
func (m *serveMetrics) listener(ln net.Listener) net.Listener {
	if m == nil {
		return ln
	}
	return m.reg.Listener(ln)
}

// storeObserver counts object-store requests (nil without metrics).
func (m *serveMetrics) storeObserver() func(op, status string, read, written int64) {
	if m == nil {
		return nil
	}
	return m.reg.StoreObserver()
}

// storeRetries counts object-store retries (nil without metrics).
func (m *serveMetrics) storeRetries() func() {
	if m == nil {
		return nil
	}
	return m.reg.StoreRetries()
}

// nbdObserver counts NBD negotiations (nil without metrics).
func (m *serveMetrics) nbdObserver() func(event string) {
	if m == nil {
		return nil
	}
	return m.reg.NBDObserver()
}

// close stops serving the metrics.
func (m *serveMetrics) close() {
	if m != nil {
		m.stop()
	}
}
