package metrics

import (
	"net"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// connMetrics are the NBD connection series, made on first use.
type connMetrics struct {
	once  sync.Once
	open  prometheus.Gauge
	total prometheus.Counter
}

// Listener returns ln with the connections it accepts counted: open now
// (vdisk_nbd_connections_open) and accepted in all
// (vdisk_nbd_connections_total). It sees connections only, not the NBD
// handshakes on them.
func (r *Registry) Listener(ln net.Listener) net.Listener {
	r.conns.once.Do(func() {
		r.conns.open = prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vdisk_nbd_connections_open", Help: "NBD client connections open now.",
		})
		r.conns.total = prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vdisk_nbd_connections_total", Help: "NBD client connections accepted.",
		})
		r.reg.MustRegister(r.conns.open, r.conns.total)
	})
	return &countedListener{Listener: ln, m: &r.conns}
}

type countedListener struct {
	net.Listener
	m *connMetrics
}

func (l *countedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.m.total.Inc()
	l.m.open.Inc()
	return &countedConn{Conn: c, m: l.m}, nil
}

type countedConn struct {
	net.Conn
	m    *connMetrics
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(c.m.open.Dec)
	return c.Conn.Close()
}
