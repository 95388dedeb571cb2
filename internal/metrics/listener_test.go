package metrics

import (
	"net"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestListenerCounts(t *testing.T) {
	r := New("export")
	raw, err := net.Listen("unix", filepath.Join(t.TempDir(), "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ln := r.Listener(raw)
	defer ln.Close()
	var clients []net.Conn
	var served []net.Conn
	for range 3 {
		c, err := net.Dial("unix", raw.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		// The concrete connection's methods are still there.
		if _, ok := s.(syscall.Conn); !ok {
			t.Fatalf("accepted %T is not a syscall.Conn", s)
		}
		if _, ok := s.(interface{ CloseWrite() error }); !ok {
			t.Fatalf("accepted %T has no CloseWrite", s)
		}
		served = append(served, s)
	}
	served[0].Close()
	served[0].Close() // a second Close counts nothing
	if got := testutil.ToFloat64(r.conns.total); got != 3 {
		t.Errorf("connections total %v, want 3", got)
	}
	if got := testutil.ToFloat64(r.conns.open); got != 2 {
		t.Errorf("connections open %v, want 2", got)
	}
	for _, c := range append(clients, served[1:]...) {
		c.Close()
	}
	if got := testutil.ToFloat64(r.conns.open); got != 0 {
		t.Errorf("connections open %v after every close, want 0", got)
	}
}
