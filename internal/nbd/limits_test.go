package nbd

import (
	"errors"
	"io"
	"os"
	"runtime"
	"testing"
	"time"

	"vdisk/internal/nbd/wire"
)

// TestTricklingClientDropped: a client that sends a valid handshake a byte
// at a time never finishes within HandshakeTimeout and is disconnected,
// though it never stops sending.
func TestTricklingClientDropped(t *testing.T) {
	srv := &Server{Exports: []Export{{Name: "disk", Device: newGateDev(1<<20, -1)}}, HandshakeTimeout: 300 * time.Millisecond}
	sock := startServer(t, srv)
	c := dial(t, sock)
	if _, err := wire.ReadGreeting(c.br); err != nil {
		t.Fatal(err)
	}
	closed := make(chan error, 1)
	go func() { // drain option replies until the server hangs up
		_, err := io.Copy(io.Discard, c.br)
		closed <- err
	}()
	stream := be32(uint32(wire.ClientFixedNewstyle))
	for range 100000 {
		stream = append(stream, wire.AppendOption(nil, wire.OptList, nil)...)
	}
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case err := <-closed:
			if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("the test's own deadline passed first: %v", err)
			}
			return // the server dropped the trickling client
		case <-tick.C:
			if i == len(stream) {
				t.Fatal("the whole stream was accepted")
			}
			if _, err := c.nc.Write(stream[i : i+1]); err != nil {
				<-closed
				return
			}
		}
	}
}

// TestMaxBufferedBytes: payload buffers are bounded over all connections:
// a second connection's write waits for room while the first one's fills
// the bound, and runs once it is released.
func TestMaxBufferedBytes(t *testing.T) {
	d := newGateDev(1<<20, 0)
	srv := &Server{Exports: []Export{{Name: "disk", Device: d}}, MaxBufferedBytes: 128 << 10, noInline: true}
	sock := startServer(t, srv)
	a, b := dial(t, sock), dial(t, sock)
	a.open("disk", false)
	b.open("disk", false)
	a.send(wire.Request{Type: wire.CmdWrite, Cookie: 1, Offset: 0, Length: 128 << 10}, randBytes(128<<10))
	<-d.entered // a's write holds the whole bound inside the device
	b.send(wire.Request{Type: wire.CmdWrite, Cookie: 2, Offset: 512 << 10, Length: 64 << 10}, randBytes(64<<10))
	deadline := time.Now().Add(testTimeout)
	for srv.buffered.waiters() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the second connection's write did not wait for room")
		}
		runtime.Gosched()
	}
	if n := d.inside.Load(); n != 1 {
		t.Fatalf("%d operations inside the device, want 1", n)
	}
	close(d.gate)
	if r := a.recv(nil); r.cookie != 1 || r.errno != 0 {
		t.Fatalf("first write: %+v", r)
	}
	if r := b.recv(nil); r.cookie != 2 || r.errno != 0 {
		t.Fatalf("second write: %+v", r)
	}
}
