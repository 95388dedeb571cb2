package nbd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"

	"vdisk/internal/blockdev"
	"vdisk/internal/nbd/wire"
)

// Defaults and bounds of a Server.
const (
	// DefaultMaxInFlight is the number of requests one connection may have
	// in flight when Server.MaxInFlight is 0.
	DefaultMaxInFlight = 64
	// DefaultMaxPayload is the largest READ or WRITE payload served when
	// Server.MaxPayload is 0 (32 MiB, the protocol's default maximum).
	DefaultMaxPayload = 32 << 20
	// minMaxPayload is the smallest MaxPayload accepted: the spec requires
	// unfragmented reads of 64 KiB to work.
	minMaxPayload = 64 << 10
	// maxInFlightBytes bounds the payload buffers of one connection's
	// in-flight requests (a single request larger than this still runs,
	// alone).
	maxInFlightBytes = 64 << 20
	// DefaultHandshakeTimeout bounds the whole option haggling of a
	// connection when Server.HandshakeTimeout is 0 (qemu-nbd's
	// --handshake-limit defaults to 10 s too): a client that trickles its
	// handshake a byte at a time is dropped when it runs out.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultMaxBufferedBytes bounds the payload buffers of all
	// connections together when Server.MaxBufferedBytes is 0.
	DefaultMaxBufferedBytes = 256 << 20
	// optionShutdownGrace is how long a connection still negotiating when
	// the server shuts down may take to send the option it is in the
	// middle of, to be answered NBD_REP_ERR_SHUTDOWN.
	optionShutdownGrace = 5 * time.Second
	// maxOptions bounds the options one connection may send.
	maxOptions = 1024
	// readBufSize is the buffered reader on each connection.
	readBufSize = 64 << 10
)

// Export is one named disk a Server offers.
type Export struct {
	// Name is what clients ask for (at most 4096 bytes of UTF-8 without
	// NUL). Names are unique within a Server. The first export is also
	// the default export "".
	Name string
	// Description is shown to clients that ask (NBD_INFO_DESCRIPTION,
	// NBD_OPT_LIST).
	Description string
	// Device is the disk. The Server never closes it; Shutdown flushes it.
	Device blockdev.Device
	// ReadOnly refuses writes with EPERM. It is also in effect when
	// blockdev.InfoOf(Device).ReadOnly.
	ReadOnly bool
	// MinBlockSize, when set, is the minimum block size advertised
	// (NBD_INFO_BLOCK_SIZE): a power of two up to 64 KiB, the unit in which
	// requests are served best (a file opened for direct I/O, whose
	// logical block it is). Requests of any alignment still work. Zero
	// advertises 1.
	MinBlockSize uint32
}

// Server serves Exports over NBD. Its fields must be set before the first
// call of Serve or ServeConn and not changed afterwards. Serve, ServeConn
// and Shutdown may be called from any goroutine; one Server may serve
// several listeners and connections at once.
type Server struct {
	// Exports are the disks offered; the first is also the default "".
	Exports []Export
	// TLSConfig enables TLS (STARTTLS) and requires it: a client must
	// upgrade before any other option (FORCEDTLS). nil means no TLS.
	// Its MinVersion is raised to TLS 1.3; client certificates are
	// verified as it says (ClientAuth, ClientCAs).
	TLSConfig *tls.Config
	// Logger receives connection events; nil discards them.
	Logger *slog.Logger
	// MaxInFlight bounds the requests one connection has in flight;
	// 0 means DefaultMaxInFlight.
	MaxInFlight int
	// MaxPayload is the largest READ or WRITE served, advertised as the
	// maximum block size; 0 means DefaultMaxPayload. At least 64 KiB.
	MaxPayload int
	// MaxConnections bounds the connections Serve has open at once (over
	// all its listeners), like qemu-nbd --shared: a further client waits
	// in the listener's backlog until one ends. 0 means no bound.
	MaxConnections int
	// MaxBufferedBytes bounds the READ and WRITE payload buffers of all
	// connections together (each connection also holds at most 64 MiB); a
	// connection's reader waits for room before it takes a request's
	// payload. A single request larger than the bound still runs, alone.
	// 0 means DefaultMaxBufferedBytes.
	MaxBufferedBytes int64
	// HandshakeTimeout bounds a connection's whole negotiation, from the
	// greeting to the choice of an export; 0 means DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// Observe, when set, hears how each connection's negotiation ended:
	// "handshake_ok" (an export chosen), "handshake_abort" (the client
	// left), "handshake_failed" (an error or the deadline), and of each
	// TLS handshake: "tls_ok", "tls_failed" (metrics). It is called from
	// the connections' goroutines.
	Observe func(event string)

	// noInline makes every request run on its own goroutine (tests that
	// need a blocked request not to hold up the reader set it).
	noInline bool

	initOnce         sync.Once
	initErr          error
	exports          []*export
	byName           map[string]*export
	tlsConfig        *tls.Config
	log              *slog.Logger
	maxInFlight      int
	maxPayload       int
	handshakeTimeout time.Duration
	buffered         budget        // payload bytes of all connections
	slots            chan struct{} // one per connection Serve has open; nil: no bound
	closing          chan struct{} // closed by Shutdown

	mu        sync.Mutex
	shutdown  bool
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	connWG    sync.WaitGroup // one per registered conn
}

// export is an Export resolved once: its capabilities and flags.
type export struct {
	name, desc string
	dev        blockdev.Device // its Size is read live: a disk may grow
	readOnly   bool
	trimmer    bool
	zeroWriter bool
	flags      wire.TransmissionFlags // without SEND_DF, which depends on the connection
	preferred  uint32
	minBlock   uint32 // advertised minimum block size
}

func (s *Server) init() error {
	s.initOnce.Do(func() { s.initErr = s.setup() })
	return s.initErr
}

func (s *Server) setup() error {
	s.log = s.Logger
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.closing = make(chan struct{})
	if s.MaxConnections < 0 {
		return fmt.Errorf("nbd: MaxConnections %d is negative", s.MaxConnections)
	}
	if s.MaxConnections > 0 {
		s.slots = make(chan struct{}, s.MaxConnections)
	}
	s.maxInFlight = s.MaxInFlight
	if s.maxInFlight <= 0 {
		s.maxInFlight = DefaultMaxInFlight
	}
	s.handshakeTimeout = s.HandshakeTimeout
	if s.handshakeTimeout <= 0 {
		s.handshakeTimeout = DefaultHandshakeTimeout
	}
	maxBuffered := s.MaxBufferedBytes
	if maxBuffered <= 0 {
		maxBuffered = DefaultMaxBufferedBytes
	}
	s.buffered.init(1<<31, maxBuffered)
	s.maxPayload = s.MaxPayload
	if s.maxPayload == 0 {
		s.maxPayload = DefaultMaxPayload
	}
	if s.maxPayload < minMaxPayload || s.maxPayload > 1<<31 {
		return fmt.Errorf("nbd: MaxPayload %d outside [%d, 2 GiB]", s.maxPayload, minMaxPayload)
	}
	if s.TLSConfig != nil {
		s.tlsConfig = s.TLSConfig.Clone()
		if s.tlsConfig.MinVersion < tls.VersionTLS13 {
			s.tlsConfig.MinVersion = tls.VersionTLS13
		}
	}
	if len(s.Exports) == 0 {
		return ErrNoExports
	}
	s.byName = make(map[string]*export)
	for _, e := range s.Exports {
		if e.Device == nil {
			return fmt.Errorf("%w: export %q has no Device", ErrBadExport, e.Name)
		}
		if err := wire.CheckString(e.Name); err != nil {
			return fmt.Errorf("%w: name %q: %v", ErrBadExport, e.Name, err)
		}
		if err := wire.CheckString(e.Description); err != nil {
			return fmt.Errorf("%w: description of %q: %v", ErrBadExport, e.Name, err)
		}
		if m := e.MinBlockSize; m > 64<<10 || m&(m-1) != 0 {
			return fmt.Errorf("%w: %q: minimum block size %d is not a power of two up to 64 KiB", ErrBadExport, e.Name, m)
		}
		if _, dup := s.byName[e.Name]; dup {
			return fmt.Errorf("%w: duplicate name %q", ErrBadExport, e.Name)
		}
		x := newExport(e)
		s.exports = append(s.exports, x)
		s.byName[e.Name] = x
	}
	if _, named := s.byName[""]; !named {
		s.byName[""] = s.exports[0]
	}
	s.listeners = make(map[net.Listener]struct{})
	s.conns = make(map[*conn]struct{})
	return nil
}

func newExport(e Export) *export {
	info := blockdev.InfoOf(e.Device)
	x := &export{
		name:     e.Name,
		desc:     e.Description,
		dev:      e.Device,
		readOnly: e.ReadOnly || info.ReadOnly,
	}
	_, x.trimmer = e.Device.(blockdev.Trimmer)
	_, x.zeroWriter = e.Device.(blockdev.ZeroWriter)
	x.flags = wire.FlagHasFlags | wire.FlagSendFlush | wire.FlagSendCache | wire.FlagCanMultiConn
	if x.readOnly {
		x.flags |= wire.FlagReadOnly
	} else {
		x.flags |= wire.FlagSendFUA | wire.FlagSendWriteZeroes
		if x.trimmer {
			x.flags |= wire.FlagSendTrim
		}
		if x.zeroWriter {
			x.flags |= wire.FlagSendFastZero
		}
	}
	if info.Rotational {
		x.flags |= wire.FlagRotational
	}
	x.preferred = max(info.PhysicalBlockSize, 512)
	x.minBlock = max(e.MinBlockSize, 1)
	x.preferred = max(x.preferred, x.minBlock)
	return x
}

// blockSize is what the server advertises in NBD_INFO_BLOCK_SIZE: any
// alignment works (Devices follow io.ReaderAt); the minimum is the
// export's MinBlockSize (1 unless set), the device's physical block size
// is preferred, and MaxPayload is the largest request.
func (s *Server) blockSize(x *export) wire.BlockSize {
	return wire.BlockSize{Min: x.minBlock, Preferred: min(x.preferred, uint32(s.maxPayload)), Max: uint32(s.maxPayload)}
}

// Serve accepts connections on ln and serves each in its own goroutine
// until Shutdown (then it returns ErrServerClosed) or until ctx is done
// (then it returns ctx.Err()). Either way it closes ln, and before
// returning it waits for the connections it accepted to end; when ctx is
// done they end gracefully, as in Shutdown: requests in flight are
// finished and answered first. Devices are flushed only by Shutdown.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if err := s.init(); err != nil {
		ln.Close()
		return err
	}
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	var wg sync.WaitGroup
	defer wg.Wait()
	var delay time.Duration
	for {
		if s.slots != nil {
			select {
			case s.slots <- struct{}{}:
			case <-ctx.Done():
				return ctx.Err()
			case <-s.closing:
				return ErrServerClosed
			}
		}
		nc, err := ln.Accept()
		if err != nil {
			if s.slots != nil {
				<-s.slots
			}
			if s.isShutdown() {
				return ErrServerClosed
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) || errors.Is(err, syscall.ECONNABORTED) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn("nbd: accept", "err", err, "retry_in", delay)
				t := time.NewTimer(delay)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
				}
				continue
			}
			return fmt.Errorf("nbd: accept: %w", err)
		}
		delay = 0
		wg.Add(1)
		go func() {
			defer wg.Done()
			if s.slots != nil {
				defer func() { <-s.slots }()
			}
			if err := s.ServeConn(ctx, nc); err != nil && !errors.Is(err, ErrServerClosed) {
				s.log.Info("nbd: connection ended", "remote", nc.RemoteAddr().String(), "err", err)
			}
		}()
	}
}

// ServeConn serves one connection, from the handshake to the end of the
// transmission phase, and closes it. It returns nil when the client ended
// the session properly (NBD_OPT_ABORT, NBD_CMD_DISC, or closing between
// requests) or the server shut down, ErrServerClosed if Shutdown had
// already been called, and otherwise the error that ended it. When ctx is
// done the connection ends gracefully: no new requests are read, those in
// flight are finished and answered, then it closes.
func (s *Server) ServeConn(ctx context.Context, nc net.Conn) error {
	if err := s.init(); err != nil {
		nc.Close()
		return err
	}
	c := newConn(s, nc)
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		nc.Close()
		return ErrServerClosed
	}
	s.conns[c] = struct{}{}
	s.connWG.Add(1)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		s.connWG.Done()
	}()
	stop := context.AfterFunc(ctx, c.beginShutdown)
	defer stop()
	err := c.serve()
	c.close()
	return err
}

func (s *Server) isShutdown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shutdown
}

// Shutdown stops the server gracefully: it closes the listeners, stops
// reading new requests on every connection (a connection still
// negotiating has its next option, if it comes within a few seconds,
// answered NBD_REP_ERR_SHUTDOWN and is then closed), waits for the requests in flight to finish and be answered,
// closes the connections, and then flushes every export's Device. If ctx
// ends first, every connection is closed at once; Shutdown still waits for
// operations already inside a Device to return, then returns ctx.Err().
func (s *Server) Shutdown(ctx context.Context) error {
	if err := s.init(); err != nil {
		return err
	}
	s.mu.Lock()
	if !s.shutdown {
		close(s.closing)
	}
	s.shutdown = true
	for ln := range s.listeners {
		ln.Close()
	}
	for c := range s.conns {
		c.beginShutdown()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.connWG.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		s.mu.Lock()
		for c := range s.conns {
			c.abort()
		}
		s.mu.Unlock()
		<-done
	}
	for _, x := range s.exports {
		if ferr := x.dev.Flush(); ferr != nil {
			err = errors.Join(err, fmt.Errorf("nbd: flush export %q: %w", x.name, ferr))
		}
	}
	return err
}

// discard reads and drops n bytes from r.
func discard(r io.Reader, n int64) error {
	_, err := io.CopyN(io.Discard, r, n)
	return err
}
