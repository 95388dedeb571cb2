package nbd

import (
	"bufio"
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"vdisk/internal/blockdev"
	"vdisk/internal/nbd/wire"
)

// testTimeout bounds every wait of a test; generous, never a sync point.
const testTimeout = 60 * time.Second

// startServer serves srv on a unix socket in a temporary directory and
// shuts it down when the test ends.
func startServer(t testing.TB, srv *Server) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return sock
}

// memServer starts a server with one memory export "disk" of size bytes.
func memServer(t *testing.T, size int64) (string, *blockdev.Mem) {
	t.Helper()
	m := blockdev.NewMem(size)
	return startServer(t, &Server{Exports: []Export{{Name: "disk", Description: "a test disk", Device: m}}}), m
}

// client is a minimal NBD client for wire-level tests.
type client struct {
	t  testing.TB
	nc net.Conn
	br *bufio.Reader
	// reqOff records the offset of each READ cookie, for fill.
	reqOff map[uint64]uint64
	// ext: extended headers were negotiated (see openExt).
	ext bool
	// ids are the meta context ids SET_META_CONTEXT gave (openExt).
	ids map[string]uint32
}

func dial(t testing.TB, sock string) *client {
	t.Helper()
	nc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(testTimeout))
	t.Cleanup(func() { nc.Close() })
	return &client{t: t, nc: nc, br: bufio.NewReader(nc), reqOff: map[uint64]uint64{}}
}

// greet reads the greeting and sends the client flags.
func (c *client) greet(flags wire.ClientFlags) {
	c.t.Helper()
	hf, err := wire.ReadGreeting(c.br)
	if err != nil {
		c.t.Fatal(err)
	}
	if hf != wire.FlagFixedNewstyle|wire.FlagNoZeroes {
		c.t.Fatalf("handshake flags %#x", hf)
	}
	c.write(be32(uint32(flags)))
}

func be32(v uint32) []byte { return []byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)} }

func (c *client) write(b []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatal(err)
	}
}

func (c *client) opt(opt wire.Opt, data []byte) {
	c.t.Helper()
	c.write(wire.AppendOption(nil, opt, data))
}

func (c *client) optReply() wire.OptionReply {
	c.t.Helper()
	r, err := wire.ReadOptionReply(c.br)
	if err != nil {
		c.t.Fatal(err)
	}
	return r
}

// optAll sends an option and collects its replies up to the final one.
func (c *client) optAll(opt wire.Opt, data []byte) []wire.OptionReply {
	c.t.Helper()
	c.opt(opt, data)
	var out []wire.OptionReply
	for {
		r := c.optReply()
		if r.Opt != opt {
			c.t.Fatalf("reply for option %d, want %d", r.Opt, opt)
		}
		out = append(out, r)
		if r.Type == wire.RepAck || r.Type.IsError() {
			return out
		}
	}
}

// expectRep sends an option and expects exactly one reply of type want.
func (c *client) expectRep(opt wire.Opt, data []byte, want wire.Rep) {
	c.t.Helper()
	reps := c.optAll(opt, data)
	if len(reps) != 1 || reps[0].Type != want {
		c.t.Fatalf("option %d: replies %+v, want one of type %#x", opt, reps, want)
	}
}

// open does the usual handshake: fixed newstyle, optionally structured
// replies and base:allocation, then GO. It returns the export's info.
func (c *client) open(name string, structured bool) (size uint64, flags wire.TransmissionFlags) {
	c.t.Helper()
	c.greet(wire.ClientFixedNewstyle | wire.ClientNoZeroes)
	if structured {
		c.expectRep(wire.OptStructuredReply, nil, wire.RepAck)
		reps := c.optAll(wire.OptSetMetaContext, wire.AppendMetaContextRequest(nil, wire.MetaContextRequest{Name: name, Queries: []string{wire.MetaContextBaseAllocation}}))
		if len(reps) != 2 || reps[0].Type != wire.RepMetaContext {
			c.t.Fatalf("SET_META_CONTEXT replies %+v", reps)
		}
	}
	return c.goExport(name)
}

// openExt does the handshake of a current client: fixed newstyle,
// extended headers, the given meta context queries, then GO.
func (c *client) openExt(name string, queries ...string) (size uint64, flags wire.TransmissionFlags) {
	c.t.Helper()
	c.greet(wire.ClientFixedNewstyle | wire.ClientNoZeroes)
	c.expectRep(wire.OptExtendedHeaders, nil, wire.RepAck)
	c.ext = true
	if len(queries) > 0 {
		reps := c.optAll(wire.OptSetMetaContext, wire.AppendMetaContextRequest(nil, wire.MetaContextRequest{Name: name, Queries: queries}))
		if reps[len(reps)-1].Type != wire.RepAck {
			c.t.Fatalf("SET_META_CONTEXT replies %+v", reps)
		}
		c.ids = map[string]uint32{}
		for _, r := range reps[:len(reps)-1] {
			id, name, err := wire.DecodeMetaContext(r.Data)
			if err != nil {
				c.t.Fatal(err)
			}
			c.ids[name] = id
		}
	}
	return c.goExport(name)
}

func (c *client) goExport(name string) (uint64, wire.TransmissionFlags) {
	c.t.Helper()
	var size uint64
	var flags wire.TransmissionFlags
	for _, r := range c.optAll(wire.OptGo, wire.AppendInfoRequest(nil, wire.InfoRequest{Name: name})) {
		switch r.Type {
		case wire.RepInfo:
			in, err := wire.DecodeInfo(r.Data)
			if err != nil {
				c.t.Fatal(err)
			}
			if in.Type == wire.InfoExport {
				size, flags = in.Size, in.Flags
			}
		case wire.RepAck:
		default:
			c.t.Fatalf("GO %q: reply %#x %q", name, r.Type, r.Data)
		}
	}
	return size, flags
}

// send sends a request and its payload. With extended headers a payload
// gets NBD_CMD_FLAG_PAYLOAD_LEN and its length.
func (c *client) send(req wire.Request, payload []byte) {
	c.t.Helper()
	if c.ext {
		if len(payload) > 0 {
			req.Flags |= wire.CmdFlagPayloadLen
			req.Length = uint64(len(payload))
		}
		var b [wire.ExtRequestSize]byte
		wire.PutExtRequest(&b, req)
		c.write(append(b[:], payload...))
		return
	}
	var b [wire.RequestSize]byte
	wire.PutRequest(&b, req)
	c.write(append(b[:], payload...))
}

// result is one whole reply: the data read (for READ) and the error.
type result struct {
	cookie uint64
	errno  wire.Errno
	msg    string
	data   []byte
	chunks []wire.ReplyType
	descs  []wire.BlockDescriptor
	// byID holds the descriptors of every block status chunk by context.
	byID map[uint32][]wire.BlockDescriptor
}

// recv reads one whole reply. readLen gives, for simple replies, the
// number of data bytes that follow a successful reply to each cookie; for
// structured replies it gives the request length (holes are filled).
func (c *client) recv(readLen map[uint64]uint32) result {
	c.t.Helper()
	var res result
	for {
		rep, err := wire.ReadReply(c.br, 64<<20)
		if err != nil {
			c.t.Fatalf("read reply: %v", err)
		}
		if rep.Simple && c.ext {
			c.t.Fatalf("simple reply to cookie %d with extended headers", rep.Cookie)
		}
		if !rep.Simple && rep.Chunk.Extended != c.ext {
			c.t.Fatalf("chunk with extended header %v, negotiated %v", rep.Chunk.Extended, c.ext)
		}
		if res.cookie != 0 && rep.Cookie != res.cookie {
			c.t.Fatalf("chunk for cookie %d inside the reply to %d", rep.Cookie, res.cookie)
		}
		res.cookie = rep.Cookie
		if rep.Simple {
			res.errno = rep.Errno
			if n := readLen[rep.Cookie]; n > 0 && rep.Errno == 0 {
				res.data = make([]byte, n)
				if _, err := ioReadFull(c.br, res.data); err != nil {
					c.t.Fatal(err)
				}
			}
			return res
		}
		res.chunks = append(res.chunks, rep.Chunk.Type)
		switch t := rep.Chunk.Type; {
		case t == wire.ReplyOffsetData || t == wire.ReplyOffsetHole:
			if res.data == nil {
				res.data = make([]byte, readLen[rep.Cookie])
			}
			c.fill(res.data, rep)
		case t == wire.ReplyBlockStatus || t == wire.ReplyBlockStatusExt:
			decode := wire.DecodeBlockStatus
			if c.ext {
				decode = wire.DecodeBlockStatusExt
			}
			if (t == wire.ReplyBlockStatusExt) != c.ext {
				c.t.Fatalf("block status chunk of type %d, extended headers %v", t, c.ext)
			}
			id, descs, err := decode(rep.Payload)
			if err != nil {
				c.t.Fatalf("block status chunk: id %d, %v", id, err)
			}
			if res.byID == nil {
				res.byID = map[uint32][]wire.BlockDescriptor{}
			}
			res.byID[id] = descs
			if id == baseAllocationID {
				res.descs = descs
			}
		case t.IsError():
			ce, err := wire.DecodeError(t, rep.Payload)
			if err != nil {
				c.t.Fatal(err)
			}
			res.errno, res.msg = ce.Errno, ce.Message
		}
		if rep.Chunk.Flags&wire.ReplyFlagDone != 0 {
			return res
		}
	}
}

// fill copies a content chunk into data, which starts at the request's
// offset (recorded by the caller in reqOff).
func (c *client) fill(data []byte, rep wire.Reply) {
	c.t.Helper()
	base := c.reqOff[rep.Cookie]
	if rep.Chunk.Type == wire.ReplyOffsetHole {
		off, size, err := wire.DecodeOffsetHole(rep.Payload)
		if err != nil || off < base || off-base+uint64(size) > uint64(len(data)) {
			c.t.Fatalf("hole chunk %d+%d outside the request: %v", off, size, err)
		}
		clear(data[off-base : off-base+uint64(size)])
		return
	}
	off, p, err := wire.DecodeOffsetData(rep.Payload)
	if err != nil || off < base || off-base+uint64(len(p)) > uint64(len(data)) {
		c.t.Fatalf("data chunk %d+%d outside the request: %v", off, len(p), err)
	}
	copy(data[off-base:], p)
}

// do sends one request and waits for its reply.
func (c *client) do(req wire.Request, payload []byte) result {
	c.t.Helper()
	if req.Cookie == 0 {
		req.Cookie = 1
	}
	c.reqOff[req.Cookie] = req.Offset
	c.send(req, payload)
	n := map[uint64]uint32{}
	if req.Type == wire.CmdRead {
		n[req.Cookie] = uint32(req.Length)
	}
	res := c.recv(n)
	if res.cookie != req.Cookie {
		c.t.Fatalf("reply cookie %d, want %d", res.cookie, req.Cookie)
	}
	return res
}

// expectClosed checks that the server closed the connection.
func (c *client) expectClosed() {
	c.t.Helper()
	var b [1]byte
	if n, err := c.br.Read(b[:]); err == nil {
		c.t.Fatalf("connection still open: read %d bytes", n)
	}
}

func ioReadFull(r *bufio.Reader, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		k, err := r.Read(b[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// netPipe returns a connected pair of unix sockets.
func netPipe(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "pipe.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c2, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c1, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return c1, c2
}

func bufioReader(nc net.Conn) *bufio.Reader { return bufio.NewReader(nc) }
