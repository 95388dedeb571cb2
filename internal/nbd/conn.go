package nbd

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"vdisk/internal/nbd/wire"
)

// conn is one client connection. The goroutine running serve owns it; the
// workers it starts in the transmission phase only read the negotiated
// state and write replies through rw.
type conn struct {
	srv *Server
	raw net.Conn // the socket; deadlines and abort act on it
	nc  net.Conn // raw, or the TLS session over it
	br  *bufio.Reader
	log *slog.Logger

	mu      sync.Mutex // guards closing and the deadlines of raw
	closing bool

	// Negotiated state, written only during the handshake.
	noZeroes  bool
	tlsDone   bool
	sr        bool    // structured replies
	ext       bool    // extended headers (which imply structured replies)
	metaExp   *export // export the meta contexts were set for
	metaBase  bool    // base:allocation selected for metaExp
	metaDepth bool    // qemu:allocation-depth selected for metaExp
	exp       *export
	flags     wire.TransmissionFlags
	baseOK    bool // BLOCK_STATUS answers base:allocation for exp
	depthOK   bool // BLOCK_STATUS answers qemu:allocation-depth for exp

	// Transmission phase.
	held    bool // the reader holds replies back (reader goroutine only)
	lat     latency
	rw      replyWriter
	budget  budget
	workers sync.WaitGroup

	scratch []byte // handshake replies
}

// The ids SET_META_CONTEXT gives the contexts.
const (
	baseAllocationID  = 1 // base:allocation
	allocationDepthID = 2 // qemu:allocation-depth
)

func newConn(s *Server, nc net.Conn) *conn {
	return &conn{
		srv: s,
		raw: nc,
		nc:  nc,
		br:  bufio.NewReaderSize(nc, readBufSize),
		log: s.log.With("remote", nc.RemoteAddr().String()),
	}
}

// abort closes the socket at once; blocked reads and writes fail.
func (c *conn) abort() {
	c.mu.Lock()
	c.closing = true
	c.mu.Unlock()
	c.raw.Close()
}

// beginShutdown stops the reading of new requests: the reader's next read
// fails with a timeout, after which it drains the requests in flight.
func (c *conn) beginShutdown() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closing = true
	c.raw.SetReadDeadline(time.Unix(1, 0))
}

// setDeadline sets raw's deadline unless the connection is shutting down.
func (c *conn) setDeadline(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closing {
		c.raw.SetDeadline(t)
	}
}

func (c *conn) isClosing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing
}

// close ends the connection: the TLS session first (close_notify), then
// the socket.
func (c *conn) close() {
	if c.nc != c.raw {
		c.raw.SetWriteDeadline(time.Now().Add(time.Second))
		c.nc.Close()
	}
	c.raw.Close()
}

// structured reports whether replies are chunks: structured replies or
// extended headers were negotiated.
func (c *conn) structured() bool { return c.sr || c.ext }

// observe tells the server's Observe of event.
func (c *conn) observe(event string) {
	if c.srv.Observe != nil {
		c.srv.Observe(event)
	}
}

// serve runs the handshake and the transmission phase.
func (c *conn) serve() error {
	c.log.Debug("nbd: connection opened")
	c.setDeadline(time.Now().Add(c.srv.handshakeTimeout))
	ok, err := c.handshake()
	switch {
	case c.isClosing():
	case err != nil:
		c.observe("handshake_failed")
	case !ok:
		c.observe("handshake_abort")
	default:
		c.observe("handshake_ok")
	}
	if err != nil || !ok {
		if c.isClosing() {
			return nil
		}
		return err
	}
	c.setDeadline(time.Time{})
	c.log.Debug("nbd: transmission", "export", c.exp.name, "structured", c.structured(), "extended_headers", c.ext)
	return c.transmit()
}

// handshake runs option haggling. It returns true when the client chose an
// export (c.exp set), false after NBD_OPT_ABORT.
func (c *conn) handshake() (bool, error) {
	if _, err := c.nc.Write(wire.AppendGreeting(nil, wire.FlagFixedNewstyle|wire.FlagNoZeroes)); err != nil {
		return false, fmt.Errorf("nbd: send greeting: %w", err)
	}
	cf, err := wire.ReadClientFlags(c.br)
	if err != nil {
		return false, err
	}
	if cf&^(wire.ClientFixedNewstyle|wire.ClientNoZeroes) != 0 {
		return false, fmt.Errorf("%w: unknown client flags %#x", errProtocol, uint32(cf))
	}
	if c.srv.tlsConfig != nil && cf&wire.ClientFixedNewstyle == 0 {
		return false, fmt.Errorf("%w: TLS is required but the client does not speak fixed newstyle", errProtocol)
	}
	c.noZeroes = cf&wire.ClientNoZeroes != 0
	for range maxOptions {
		if err := c.awaitOption(); err != nil {
			if errors.Is(err, io.EOF) {
				return false, fmt.Errorf("nbd: client hung up during negotiation: %w", err)
			}
			return false, err
		}
		h, err := wire.ReadOptionHeader(c.br)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return false, fmt.Errorf("nbd: client hung up during negotiation: %w", err)
			}
			return false, err
		}
		if h.Len > wire.MaxOptionLen {
			if h.Opt == wire.OptExportName {
				return false, fmt.Errorf("%w: export name of %d bytes", errProtocol, h.Len)
			}
			if err := discard(c.br, int64(h.Len)); err != nil {
				return false, fmt.Errorf("nbd: skip option %d: %w", h.Opt, err)
			}
			if err := c.replyErr(h.Opt, wire.RepErrTooBig, "option data of %d bytes exceeds the limit of %d", h.Len, wire.MaxOptionLen); err != nil {
				return false, err
			}
			continue
		}
		data := make([]byte, h.Len)
		if _, err := io.ReadFull(c.br, data); err != nil {
			return false, fmt.Errorf("nbd: read option %d data: %w", h.Opt, err)
		}
		if c.isClosing() {
			return false, c.refuseShutdown(h.Opt)
		}
		done, err := c.option(h.Opt, data)
		if err != nil || done {
			return err == nil && c.exp != nil, err
		}
	}
	return false, fmt.Errorf("%w: more than %d options", errProtocol, maxOptions)
}

// awaitOption waits until an option header is buffered. When the server
// shuts down meanwhile, the client gets optionShutdownGrace more to send the
// option it may be in the middle of, which is then answered
// NBD_REP_ERR_SHUTDOWN.
func (c *conn) awaitOption() error {
	_, err := c.br.Peek(16)
	if err == nil || !c.isClosing() {
		return err
	}
	c.mu.Lock()
	c.raw.SetReadDeadline(time.Now().Add(optionShutdownGrace))
	c.mu.Unlock()
	if _, err := c.br.Peek(16); err != nil {
		return err
	}
	return nil
}

// refuseShutdown answers an option received while the server shuts down:
// NBD_REP_ERR_SHUTDOWN (an ACK for NBD_OPT_ABORT; nothing for
// NBD_OPT_EXPORT_NAME, which has no error reply), then negotiation ends.
func (c *conn) refuseShutdown(opt wire.Opt) error {
	switch opt {
	case wire.OptAbort:
		c.reply(opt, wire.RepAck, nil)
	case wire.OptExportName:
	default:
		c.replyErr(opt, wire.RepErrShutdown, "the server is shutting down")
	}
	return nil
}

// option answers one option. done means negotiation is over: the client
// chose an export (c.exp) or aborted.
func (c *conn) option(opt wire.Opt, data []byte) (done bool, err error) {
	if c.srv.tlsConfig != nil && !c.tlsDone {
		switch opt {
		case wire.OptStartTLS, wire.OptAbort:
		case wire.OptExportName:
			return true, fmt.Errorf("%w: NBD_OPT_EXPORT_NAME before the required STARTTLS", errProtocol)
		default:
			return false, c.replyErr(opt, wire.RepErrTLSReqd, "TLS is required: send NBD_OPT_STARTTLS first")
		}
	}
	switch opt {
	case wire.OptExportName:
		return c.optExportName(data)
	case wire.OptAbort:
		c.reply(opt, wire.RepAck, nil) // the client may already be gone
		return true, nil
	case wire.OptList:
		return false, c.optList(data)
	case wire.OptStartTLS:
		return false, c.optStartTLS(data)
	case wire.OptInfo, wire.OptGo:
		return c.optInfo(opt, data)
	case wire.OptStructuredReply:
		switch {
		case len(data) != 0:
			return false, c.replyErr(opt, wire.RepErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data")
		case c.ext:
			return false, c.replyErr(opt, wire.RepErrExtHeaderReqd, "extended headers are negotiated already and take precedence")
		}
		c.sr = true
		return false, c.reply(opt, wire.RepAck, nil)
	case wire.OptExtendedHeaders:
		switch {
		case len(data) != 0:
			return false, c.replyErr(opt, wire.RepErrInvalid, "NBD_OPT_EXTENDED_HEADERS takes no data")
		case c.ext:
			return false, c.replyErr(opt, wire.RepErrInvalid, "extended headers are negotiated already")
		}
		c.ext = true
		c.log.Debug("nbd: extended headers negotiated")
		return false, c.reply(opt, wire.RepAck, nil)
	case wire.OptListMetaContext, wire.OptSetMetaContext:
		return false, c.optMetaContext(opt, data)
	}
	return false, c.replyErr(opt, wire.RepErrUnsup, "option %d is not supported", uint32(opt))
}

// reply sends one option reply.
func (c *conn) reply(opt wire.Opt, rep wire.Rep, data []byte) error {
	c.scratch = wire.AppendOptionReply(c.scratch[:0], opt, rep, data)
	if _, err := c.nc.Write(c.scratch); err != nil {
		return fmt.Errorf("nbd: send option reply: %w", err)
	}
	return nil
}

// replyErr sends an error reply with a message for a person.
func (c *conn) replyErr(opt wire.Opt, rep wire.Rep, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if len(msg) > wire.MaxStringLen {
		msg = msg[:wire.MaxStringLen]
	}
	c.log.Debug("nbd: option refused", "option", uint32(opt), "reply", uint32(rep), "msg", msg)
	return c.reply(opt, rep, []byte(msg))
}

// upgradeTLS starts TLS over raw after STARTTLS was acknowledged.
func (c *conn) upgradeTLS() error {
	if c.br.Buffered() > 0 {
		return fmt.Errorf("%w: data sent after NBD_OPT_STARTTLS before its reply", errProtocol)
	}
	tc := tls.Server(c.raw, c.srv.tlsConfig)
	if err := tc.Handshake(); err != nil {
		c.observe("tls_failed")
		return fmt.Errorf("nbd: TLS handshake: %w", err)
	}
	c.observe("tls_ok")
	c.nc = tc
	c.br.Reset(tc)
	c.tlsDone = true
	// Nothing negotiated in clear text carries over.
	c.sr, c.ext, c.metaExp, c.metaBase, c.metaDepth = false, false, nil, false, false
	c.log.Debug("nbd: TLS established", "version", tc.ConnectionState().Version)
	return nil
}
