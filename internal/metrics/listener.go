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

// nbdEvents are the NBD negotiation series, made on first use.
type nbdEvents struct {
	once       sync.Once
	handshakes *prometheus.CounterVec
	tls        *prometheus.CounterVec
}

// NBDObserver returns the function an NBD server tells how each
// negotiation ended (nbd.Server.Observe): vdisk_nbd_handshakes_total by
// result (ok, abort, failed) and vdisk_nbd_tls_handshakes_total by result
// (ok, failed).
func (r *Registry) NBDObserver() func(event string) {
	r.nbd.once.Do(func() {
		r.nbd.handshakes = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vdisk_nbd_handshakes_total", Help: "NBD negotiations by how they ended (ok: an export chosen, abort: the client left, failed: an error or the deadline).",
		}, []string{"result"})
		r.nbd.tls = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vdisk_nbd_tls_handshakes_total", Help: "TLS handshakes of NBD clients, by result.",
		}, []string{"result"})
		r.reg.MustRegister(r.nbd.handshakes, r.nbd.tls)
	})
	return func(event string) {
		switch event {
		case "handshake_ok":
			r.nbd.handshakes.WithLabelValues("ok").Inc()
		case "handshake_abort":
			r.nbd.handshakes.WithLabelValues("abort").Inc()
		case "handshake_failed":
			r.nbd.handshakes.WithLabelValues("failed").Inc()
		case "tls_ok":
			r.nbd.tls.WithLabelValues("ok").Inc()
		case "tls_failed":
			r.nbd.tls.WithLabelValues("failed").Inc()
		}
	}
}
