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
	// The wrappers embed the concrete connection types, so that what
	// package net looks for on them (writev for net.Buffers, splice) is
	// still there: hiding it behind net.Conn would cost a write system
	// call per buffer of every reply.
	switch cc := c.(type) {
	case *net.UnixConn:
		return &unixConn{UnixConn: cc, closed: closed{m: l.m}}, nil
	case *net.TCPConn:
		return &tcpConn{TCPConn: cc, closed: closed{m: l.m}}, nil
	}
	return &otherConn{Conn: c, closed: closed{m: l.m}}, nil
}

// closed counts a connection closed, once.
type closed struct {
	m    *connMetrics
	once sync.Once
}

func (c *closed) done() { c.once.Do(c.m.open.Dec) }

type unixConn struct {
	*net.UnixConn
	closed closed
}

func (c *unixConn) Close() error {
	c.closed.done()
	return c.UnixConn.Close()
}

type tcpConn struct {
	*net.TCPConn
	closed closed
}

func (c *tcpConn) Close() error {
	c.closed.done()
	return c.TCPConn.Close()
}

type otherConn struct {
	net.Conn
	closed closed
}

func (c *otherConn) Close() error {
	c.closed.done()
	return c.Conn.Close()
}
