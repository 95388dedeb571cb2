package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"vdisk/internal/blockdev"
	"vdisk/internal/nbd/wire"
)

// gateDev blocks every read or write at offset gateOff until gate is
// closed, and counts the calls inside the device at once.
type gateDev struct {
	*blockdev.Mem
	gateOff  int64
	gate     chan struct{}
	entered  chan struct{} // receives one value per gated call that arrived
	inside   atomic.Int32
	maxInner atomic.Int32
	flushes  atomic.Int32
}

func newGateDev(size, gateOff int64) *gateDev {
	return &gateDev{Mem: blockdev.NewMem(size), gateOff: gateOff, gate: make(chan struct{}), entered: make(chan struct{}, 1024)}
}

func (d *gateDev) enter(off int64) {
	n := d.inside.Add(1)
	for {
		m := d.maxInner.Load()
		if n <= m || d.maxInner.CompareAndSwap(m, n) {
			break
		}
	}
	if off == d.gateOff {
		d.entered <- struct{}{}
		<-d.gate
	}
}

func (d *gateDev) ReadAt(p []byte, off int64) (int, error) {
	d.enter(off)
	defer d.inside.Add(-1)
	return d.Mem.ReadAt(p, off)
}

func (d *gateDev) WriteAt(p []byte, off int64) (int, error) {
	d.enter(off)
	defer d.inside.Add(-1)
	return d.Mem.WriteAt(p, off)
}

func (d *gateDev) Flush() error {
	d.flushes.Add(1)
	return d.Mem.Flush()
}

func TestOutOfOrderReplies(t *testing.T) {
	d := newGateDev(1<<20, 0)
	sock := startServer(t, &Server{Exports: []Export{{Name: "disk", Device: d}}, noInline: true})
	c := dial(t, sock)
	c.open("disk", true)
	c.reqOff[1], c.reqOff[2] = 0, 4096
	c.send(wire.Request{Type: wire.CmdRead, Cookie: 1, Offset: 0, Length: 4096}, nil)
	<-d.entered // request 1 is blocked inside the device
	c.send(wire.Request{Type: wire.CmdRead, Cookie: 2, Offset: 4096, Length: 4096}, nil)
	lens := map[uint64]uint32{1: 4096, 2: 4096}
	if r := c.recv(lens); r.cookie != 2 || r.errno != 0 {
		t.Fatalf("first reply %+v, want cookie 2", r)
	}
	close(d.gate)
	if r := c.recv(lens); r.cookie != 1 || r.errno != 0 {
		t.Fatalf("second reply %+v, want cookie 1", r)
	}
}

func TestManyConnections(t *testing.T) {
	const (
		conns    = 8
		perConn  = 200
		blockLen = 4096
		inFlight = 4
	)
	d := newGateDev(conns*perConn*blockLen, -1)
	sock := startServer(t, &Server{MaxInFlight: inFlight, Exports: []Export{{Name: "disk", Device: d}}})
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for ci := range conns {
		c := dial(t, sock)
		structured := ci%2 == 0
		c.open("disk", structured)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- pipeline(c, uint64(ci*perConn), perConn, blockLen)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if m := d.maxInner.Load(); m > conns*inFlight {
		t.Fatalf("%d calls inside the device at once, bound is %d", m, conns*inFlight)
	}
}

// pipeline writes n blocks with every request sent before any reply is
// read, then reads them back the same way, checking each block's content
// by its cookie. It runs on its own goroutine, so it returns errors.
func pipeline(c *client, first uint64, n int, blockLen int) error {
	block := func(i uint64) []byte {
		b := bytes.Repeat([]byte{byte(i)}, blockLen)
		binary.BigEndian.PutUint64(b, i)
		return b
	}
	var sendErr error
	var sent sync.WaitGroup
	sent.Add(1)
	go func() {
		defer sent.Done()
		var buf []byte
		for i := first; i < first+uint64(n); i++ {
			var h [wire.RequestSize]byte
			wire.PutRequest(&h, wire.Request{Type: wire.CmdWrite, Cookie: i + 1, Offset: i * uint64(blockLen), Length: uint64(blockLen)})
			buf = append(append(buf[:0], h[:]...), block(i)...)
			if _, err := c.nc.Write(buf); err != nil {
				sendErr = err
				return
			}
		}
	}()
	seen := map[uint64]bool{}
	for range n {
		rep, err := wire.ReadReply(c.br, 1<<20)
		if err != nil {
			return err
		}
		if rep.Errno != 0 || seen[rep.Cookie] {
			return errors.New("bad or duplicate write reply")
		}
		seen[rep.Cookie] = true
	}
	sent.Wait()
	if sendErr != nil {
		return sendErr
	}
	for i := first; i < first+uint64(n); i++ {
		var h [wire.RequestSize]byte
		wire.PutRequest(&h, wire.Request{Type: wire.CmdRead, Cookie: i + 1, Offset: i * uint64(blockLen), Length: uint64(blockLen)})
		if _, err := c.nc.Write(h[:]); err != nil {
			return err
		}
	}
	for range n {
		rep, err := wire.ReadReply(c.br, 1<<20)
		if err != nil {
			return err
		}
		data := make([]byte, blockLen)
		if rep.Simple {
			if _, err := ioReadFull(c.br, data); err != nil {
				return err
			}
		} else {
			var off uint64
			if off, data, err = wire.DecodeOffsetData(rep.Payload); err != nil || off != (rep.Cookie-1)*uint64(blockLen) || rep.Chunk.Flags&wire.ReplyFlagDone == 0 {
				return errors.New("bad read chunk")
			}
		}
		if !bytes.Equal(data, block(rep.Cookie-1)) {
			return errors.New("read back wrong data")
		}
	}
	return nil
}

func TestShutdownCompletesInFlight(t *testing.T) {
	d := newGateDev(1<<20, 8192)
	srv := &Server{Exports: []Export{{Name: "disk", Device: d}}}
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), ln) }()

	c := dial(t, sock)
	c.open("disk", false)
	idle := dial(t, sock) // still negotiating when the server shuts down
	idle.greet(wire.ClientFixedNewstyle)
	half := dial(t, sock) // in the middle of sending an option
	half.greet(wire.ClientFixedNewstyle)
	list := wire.AppendOption(nil, wire.OptList, nil)
	half.write(list[:5])
	aborting := dial(t, sock)
	aborting.greet(wire.ClientFixedNewstyle)

	c.send(wire.Request{Type: wire.CmdWrite, Cookie: 9, Offset: 8192, Length: 4}, []byte("abcd"))
	<-d.entered
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(context.Background()) }()
	waitShutdown(t, srv)
	// Negotiating clients get NBD_REP_ERR_SHUTDOWN for their next option
	// (an ACK for NBD_OPT_ABORT), then the connection ends.
	idle.expectRep(wire.OptInfo, wire.AppendInfoRequest(nil, wire.InfoRequest{Name: "disk"}), wire.RepErrShutdown)
	idle.expectClosed()
	half.write(list[5:])
	if r := half.optReply(); r.Opt != wire.OptList || r.Type != wire.RepErrShutdown {
		t.Fatalf("option completed after shutdown: reply %+v", r)
	}
	half.expectClosed()
	aborting.expectRep(wire.OptAbort, nil, wire.RepAck)
	aborting.expectClosed()
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	default:
	}
	close(d.gate)
	if r := c.recv(nil); r.cookie != 9 || r.errno != 0 {
		t.Fatalf("in-flight write reply %+v", r)
	}
	c.expectClosed()
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve returned %v", err)
	}
	if d.flushes.Load() == 0 {
		t.Fatal("Shutdown did not flush the device")
	}
	got := make([]byte, 4)
	d.Mem.ReadAt(got, 8192)
	if string(got) != "abcd" {
		t.Fatalf("device holds %q", got)
	}
	if _, err := net.Dial("unix", sock); err == nil {
		t.Fatal("listener still accepts")
	}
	c1, c2 := netPipe(t)
	defer c2.Close()
	if err := srv.ServeConn(context.Background(), c1); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("ServeConn after Shutdown = %v", err)
	}
}

// waitShutdown waits until Shutdown has begun (it has then told every
// connection to stop).
func waitShutdown(t *testing.T, srv *Server) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !srv.isShutdown() {
		if time.Now().After(deadline) {
			t.Fatal("Shutdown did not begin")
		}
		runtime.Gosched()
	}
}

func TestShutdownDeadline(t *testing.T) {
	d := newGateDev(1<<20, 0)
	srv := &Server{Exports: []Export{{Name: "disk", Device: d}}}
	c1, c2 := netPipe(t)
	served := make(chan error, 1)
	go func() { served <- srv.ServeConn(context.Background(), c1) }()
	c := &client{t: t, nc: c2, br: bufioReader(c2), reqOff: map[uint64]uint64{}}
	c.open("disk", false)
	c.send(wire.Request{Type: wire.CmdRead, Cookie: 1, Length: 512}, nil)
	<-d.entered
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(ctx) }()
	c.expectClosed() // the deadline passed: connections are closed at once
	close(d.gate)    // the device call returns; Shutdown then finishes
	if err := <-shut; !errors.Is(err, context.Canceled) {
		t.Fatalf("Shutdown = %v, want context.Canceled", err)
	}
	<-served
}

func TestServeContextCancel(t *testing.T) {
	d := newGateDev(1<<20, 8192)
	srv := &Server{Exports: []Export{{Name: "disk", Device: d}}}
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	c := dial(t, sock)
	c.open("disk", false)
	c.send(wire.Request{Type: wire.CmdRead, Cookie: 3, Offset: 8192, Length: 512}, nil)
	<-d.entered
	cancel()
	close(d.gate)
	// The request in flight is still answered, then the connection ends.
	if r := c.recv(map[uint64]uint32{3: 512}); r.cookie != 3 || r.errno != 0 || len(r.data) != 512 {
		t.Fatalf("in-flight reply %+v", r)
	}
	c.expectClosed()
	if err := <-served; !errors.Is(err, context.Canceled) {
		t.Fatalf("Serve = %v, want context.Canceled", err)
	}
	if _, err := net.Dial("unix", sock); err == nil {
		t.Fatal("listener still accepts")
	}
}

// TestMaxConnections: with MaxConnections 1 a second client is not served
// (no greeting) while the first is connected, and is served as soon as the
// first goes; Shutdown ends a Serve waiting for a free slot.
func TestMaxConnections(t *testing.T) {
	srv := &Server{Exports: []Export{{Name: "disk", Device: blockdev.NewMem(1 << 20)}}, MaxConnections: 1}
	sock := startServer(t, srv)
	a := dial(t, sock)
	if _, err := wire.ReadGreeting(a.br); err != nil {
		t.Fatalf("first client: %v", err)
	}
	b := dial(t, sock)
	b.nc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := wire.ReadGreeting(b.br); err == nil {
		t.Fatal("a second client was greeted while the only slot was taken")
	} else if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("second client while the slot is taken: %v, want a timeout", err)
	}
	a.nc.Close()
	b.nc.SetReadDeadline(time.Now().Add(testTimeout))
	if _, err := wire.ReadGreeting(b.br); err != nil {
		t.Fatalf("second client after the first left: %v", err)
	}
}
