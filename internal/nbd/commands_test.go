package nbd

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/nbd/wire"
)

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func TestCommands(t *testing.T) {
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) {
			sock, m := memServer(t, 4<<20)
			c := dial(t, sock)
			c.open("disk", structured)
			ok := func(what string, r result) {
				t.Helper()
				if r.errno != 0 {
					t.Fatalf("%s: errno %d %q", what, r.errno, r.msg)
				}
			}
			data := randBytes(300 << 10)
			ok("write", c.do(wire.Request{Type: wire.CmdWrite, Offset: 4096, Length: uint64(len(data))}, data))
			r := c.do(wire.Request{Type: wire.CmdRead, Offset: 4096, Length: uint64(len(data))}, nil)
			ok("read", r)
			if !bytes.Equal(r.data, data) {
				t.Fatal("read back differs")
			}
			got := make([]byte, len(data))
			m.ReadAt(got, 4096)
			if !bytes.Equal(got, data) {
				t.Fatal("device content differs")
			}
			ok("write fua", c.do(wire.Request{Type: wire.CmdWrite, Flags: wire.CmdFlagFUA, Offset: 0, Length: 512}, data[:512]))
			ok("flush", c.do(wire.Request{Type: wire.CmdFlush}, nil))
			ok("cache", c.do(wire.Request{Type: wire.CmdCache, Offset: 0, Length: 1 << 20}, nil))
			ok("zero-length read", c.do(wire.Request{Type: wire.CmdRead, Offset: 4 << 20}, nil))

			ok("trim", c.do(wire.Request{Type: wire.CmdTrim, Offset: 64 << 10, Length: 128 << 10}, nil))
			ok("write zeroes", c.do(wire.Request{Type: wire.CmdWriteZeroes, Flags: wire.CmdFlagNoHole | wire.CmdFlagFUA, Offset: 4096, Length: 4096}, nil))
			ok("fast zero", c.do(wire.Request{Type: wire.CmdWriteZeroes, Flags: wire.CmdFlagFastZero, Offset: 200 << 10, Length: 8192}, nil))
			want := append([]byte(nil), data...)
			clear(want[0:4096])
			clear(want[(64<<10)-4096 : (192<<10)-4096])
			clear(want[(200<<10)-4096 : (208<<10)-4096])
			r = c.do(wire.Request{Type: wire.CmdRead, Offset: 4096, Length: uint64(len(data))}, nil)
			ok("read after zeroing", r)
			if !bytes.Equal(r.data, want) {
				t.Fatal("read after trim/zero differs")
			}
			// A big read of a zero region: with structured replies it
			// comes back as holes, and still reads as zeroes.
			r = c.do(wire.Request{Type: wire.CmdRead, Offset: 1 << 20, Length: 1 << 20}, nil)
			ok("read zeroes", r)
			if !blockdev.IsZero(r.data) || len(r.data) != 1<<20 {
				t.Fatal("zero region does not read as zeroes")
			}
			if structured && (len(r.chunks) != 1 || r.chunks[0] != wire.ReplyOffsetHole) {
				t.Fatalf("zero region chunks %v, want one hole", r.chunks)
			}
			if !structured {
				return
			}
			// Data followed by zeroes: a data chunk then a hole chunk.
			r = c.do(wire.Request{Type: wire.CmdRead, Offset: 256 << 10, Length: 256 << 10}, nil)
			ok("mixed read", r)
			if want := []wire.ReplyType{wire.ReplyOffsetData, wire.ReplyOffsetHole}; fmt.Sprint(r.chunks) != fmt.Sprint(want) {
				t.Fatalf("mixed read chunks %v, want %v", r.chunks, want)
			}
			m.ReadAt(got[:256<<10], 256<<10)
			if !bytes.Equal(r.data, got[:256<<10]) {
				t.Fatal("mixed read differs")
			}
			// DF: one data chunk even over holes.
			r = c.do(wire.Request{Type: wire.CmdRead, Flags: wire.CmdFlagDF, Offset: 1 << 20, Length: 1 << 20}, nil)
			ok("read DF", r)
			if len(r.chunks) != 1 || r.chunks[0] != wire.ReplyOffsetData || !blockdev.IsZero(r.data) {
				t.Fatalf("DF read chunks %v", r.chunks)
			}
		})
	}
}

func desc(length, flags uint32) wire.BlockDescriptor {
	return wire.BlockDescriptor{Length: uint64(length), Flags: uint64(flags)}
}

func TestBlockStatus(t *testing.T) {
	sock, m := memServer(t, 1<<20)
	m.WriteAt(randBytes(64<<10), 128<<10) // data in page 2 only
	c := dial(t, sock)
	c.open("disk", true)
	const hz = wire.StateHole | wire.StateZero
	tests := []struct {
		name string
		req  wire.Request
		want []wire.BlockDescriptor
	}{
		{"whole", wire.Request{Length: 1 << 20}, []wire.BlockDescriptor{desc(128<<10, hz), desc(64<<10, 0), desc(832<<10, hz)}},
		{"unaligned", wire.Request{Offset: 100, Length: 200 << 10}, []wire.BlockDescriptor{desc((128<<10)-100, hz), desc(64<<10, 0), desc((8<<10)+100, hz)}},
		{"req one", wire.Request{Flags: wire.CmdFlagReqOne, Offset: 0, Length: 1 << 20}, []wire.BlockDescriptor{desc(128<<10, hz)}},
		{"data only", wire.Request{Offset: 130 << 10, Length: 4096}, []wire.BlockDescriptor{desc(4096, 0)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.Type = wire.CmdBlockStatus
			r := c.do(tc.req, nil)
			if r.errno != 0 || fmt.Sprint(r.descs) != fmt.Sprint(tc.want) {
				t.Fatalf("descriptors %v (errno %d %s), want %v", r.descs, r.errno, r.msg, tc.want)
			}
		})
	}
	if r := c.do(wire.Request{Type: wire.CmdBlockStatus, Offset: 1 << 20, Length: 512}, nil); r.errno != wire.EINVAL {
		t.Fatalf("past-end block status: errno %d", r.errno)
	}
	if r := c.do(wire.Request{Type: wire.CmdBlockStatus, Offset: 0, Length: 0}, nil); r.errno != wire.EINVAL {
		t.Fatalf("empty block status: errno %d", r.errno)
	}
	// Without SET_META_CONTEXT block status is refused.
	c2 := dial(t, sock)
	c2.greet(wire.ClientFixedNewstyle)
	c2.expectRep(wire.OptStructuredReply, nil, wire.RepAck)
	c2.goExport("disk")
	if r := c2.do(wire.Request{Type: wire.CmdBlockStatus, Length: 4096}, nil); r.errno != wire.EINVAL {
		t.Fatalf("block status without meta context: errno %d", r.errno)
	}
}

// faultyDev fails every read that reaches failAt, after reading the bytes
// before it, as a device with a bad sector does.
type faultyDev struct {
	*blockdev.Mem
	failAt int64
}

func (d faultyDev) ReadAt(p []byte, off int64) (int, error) {
	if end := off + int64(len(p)); end > d.failAt && off < d.failAt+512 {
		n := max(0, int(d.failAt-off))
		d.Mem.ReadAt(p[:n], off)
		return n, fmt.Errorf("read sector at %d: %w", d.failAt, syscall.EIO)
	}
	return d.Mem.ReadAt(p, off)
}

func TestErrors(t *testing.T) {
	m := blockdev.NewMem(1 << 20)
	sock := startServer(t, &Server{MaxPayload: 1 << 20, Exports: []Export{
		{Name: "disk", Device: m},
		{Name: "ro", Device: m, ReadOnly: true},
		{Name: "plain", Device: plainDev{m}},
		{Name: "faulty", Device: faultyDev{m, 8192}},
	}})
	tests := []struct {
		export     string
		name       string
		req        wire.Request
		payload    []byte
		structured bool
		want       wire.Errno
	}{
		{"disk", "read past end", wire.Request{Type: wire.CmdRead, Offset: 1 << 20, Length: 1}, nil, true, wire.EINVAL},
		{"disk", "read offset overflow", wire.Request{Type: wire.CmdRead, Offset: 1<<64 - 1, Length: 2}, nil, false, wire.EINVAL},
		{"disk", "write past end", wire.Request{Type: wire.CmdWrite, Offset: 1<<20 - 1, Length: 2}, []byte{1, 2}, false, wire.ENOSPC},
		{"disk", "trim past end", wire.Request{Type: wire.CmdTrim, Offset: 1 << 20, Length: 1}, nil, false, wire.ENOSPC},
		{"disk", "zero past end", wire.Request{Type: wire.CmdWriteZeroes, Offset: 0, Length: 1<<20 + 1}, nil, true, wire.ENOSPC},
		{"disk", "cache past end", wire.Request{Type: wire.CmdCache, Offset: 1 << 20, Length: 1}, nil, false, wire.EINVAL},
		{"disk", "oversize read", wire.Request{Type: wire.CmdRead, Length: 1<<20 + 1}, nil, true, wire.EOVERFLOW},
		{"disk", "oversize write", wire.Request{Type: wire.CmdWrite, Length: 1<<20 + 1}, make([]byte, 1<<20+1), false, wire.EINVAL},
		{"disk", "unknown command", wire.Request{Type: 42}, nil, true, wire.EINVAL},
		{"disk", "resize", wire.Request{Type: wire.CmdResize}, nil, false, wire.EINVAL},
		{"disk", "bad flag", wire.Request{Type: wire.CmdWrite, Flags: wire.CmdFlagReqOne, Length: 1}, []byte{1}, false, wire.EINVAL},
		{"disk", "DF without structured", wire.Request{Type: wire.CmdRead, Flags: wire.CmdFlagDF, Length: 1}, nil, false, wire.EINVAL},
		{"disk", "block status simple", wire.Request{Type: wire.CmdBlockStatus, Length: 1}, nil, false, wire.EINVAL},
		{"ro", "write read-only", wire.Request{Type: wire.CmdWrite, Length: 3}, []byte{1, 2, 3}, true, wire.EPERM},
		{"ro", "trim read-only", wire.Request{Type: wire.CmdTrim, Length: 512}, nil, false, wire.EPERM},
		{"ro", "zero read-only", wire.Request{Type: wire.CmdWriteZeroes, Length: 512}, nil, false, wire.EPERM},
		{"plain", "trim unsupported", wire.Request{Type: wire.CmdTrim, Length: 512}, nil, false, wire.EINVAL},
		{"plain", "fast zero unsupported", wire.Request{Type: wire.CmdWriteZeroes, Flags: wire.CmdFlagFastZero, Length: 512}, nil, true, wire.ENOTSUP},
		{"faulty", "read error simple", wire.Request{Type: wire.CmdRead, Offset: 4096, Length: 8192}, nil, false, wire.EIO},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, sock)
			c.open(tc.export, tc.structured)
			r := c.do(tc.req, tc.payload)
			if r.errno != tc.want {
				t.Fatalf("errno %d (%q), want %d", r.errno, r.msg, tc.want)
			}
			if tc.structured && r.msg == "" {
				t.Fatal("structured error without a message")
			}
			// The connection goes on after every error.
			if r := c.do(wire.Request{Type: wire.CmdRead, Cookie: 77, Length: 512}, nil); r.errno != 0 || len(r.data) != 512 {
				t.Fatalf("read after error: %+v", r)
			}
		})
	}
	t.Run("read error structured", func(t *testing.T) {
		c := dial(t, sock)
		c.open("faulty", true)
		m.WriteAt(bytes.Repeat([]byte{7}, 4096), 4096)
		r := c.do(wire.Request{Type: wire.CmdRead, Offset: 4096, Length: 8192}, nil)
		if r.errno != wire.EIO || fmt.Sprint(r.chunks) != fmt.Sprint([]wire.ReplyType{wire.ReplyOffsetData, wire.ReplyErrorOffset}) {
			t.Fatalf("chunks %v errno %d", r.chunks, r.errno)
		}
		if !bytes.Equal(r.data[:4096], bytes.Repeat([]byte{7}, 4096)) {
			t.Fatal("partial data before the error differs")
		}
	})
}

func TestBadRequests(t *testing.T) {
	sock, _ := memServer(t, 1<<20)
	tests := []struct {
		name string
		send []byte
	}{
		{"bad magic", bytes.Repeat([]byte{0xAB}, wire.RequestSize)},
		{"half header", func() []byte {
			var b [wire.RequestSize]byte
			wire.PutRequest(&b, wire.Request{Type: wire.CmdRead, Length: 512})
			return b[:10]
		}()},
		{"half write payload", func() []byte {
			var b [wire.RequestSize]byte
			wire.PutRequest(&b, wire.Request{Type: wire.CmdWrite, Length: 4096})
			return append(b[:], make([]byte, 100)...)
		}()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, sock)
			c.open("disk", false)
			c.write(tc.send)
			if tc.name != "bad magic" {
				// The client stops sending mid-request.
				c.nc.(*net.UnixConn).CloseWrite()
			}
			if _, err := c.br.ReadByte(); !errors.Is(err, io.EOF) {
				t.Fatalf("connection still open: read returned %v", err)
			}
			// Other clients are unaffected.
			c2 := dial(t, sock)
			c2.open("disk", true)
			if r := c2.do(wire.Request{Type: wire.CmdRead, Length: 512}, nil); r.errno != 0 {
				t.Fatalf("other client: errno %d", r.errno)
			}
		})
	}
}

func TestDisconnect(t *testing.T) {
	sock, m := memServer(t, 1<<20)
	c := dial(t, sock)
	c.open("disk", false)
	// A write followed at once by DISC: the write is still done and
	// answered before the server closes.
	c.send(wire.Request{Type: wire.CmdWrite, Cookie: 5, Offset: 0, Length: 4}, []byte{1, 2, 3, 4})
	c.send(wire.Request{Type: wire.CmdDisc}, nil)
	if r := c.recv(nil); r.cookie != 5 || r.errno != 0 {
		t.Fatalf("reply %+v", r)
	}
	c.expectClosed()
	got := make([]byte, 4)
	m.ReadAt(got, 0)
	if !bytes.Equal(got, []byte{1, 2, 3, 4}) {
		t.Fatalf("device holds %v", got)
	}
}

func TestMetaContextFollowsExport(t *testing.T) {
	m := blockdev.NewMem(1 << 20)
	sock := startServer(t, &Server{Exports: []Export{{Name: "a", Device: m}, {Name: "b", Device: m}}})
	tests := []struct {
		setFor, goTo string
		want         wire.Errno
	}{
		{"a", "a", 0},
		{"a", "", 0}, // "" is the first export, a
		{"a", "b", wire.EINVAL},
		{"b", "a", wire.EINVAL},
	}
	for _, tc := range tests {
		t.Run(tc.setFor+"->"+tc.goTo, func(t *testing.T) {
			c := dial(t, sock)
			c.greet(wire.ClientFixedNewstyle)
			c.expectRep(wire.OptStructuredReply, nil, wire.RepAck)
			c.optAll(wire.OptSetMetaContext, wire.AppendMetaContextRequest(nil, wire.MetaContextRequest{Name: tc.setFor, Queries: []string{wire.MetaContextBaseAllocation}}))
			c.goExport(tc.goTo)
			if r := c.do(wire.Request{Type: wire.CmdBlockStatus, Length: 4096}, nil); r.errno != tc.want {
				t.Fatalf("block status errno %d, want %d", r.errno, tc.want)
			}
		})
	}
}

func TestFUAFlushes(t *testing.T) {
	d := newGateDev(1<<20, -1)
	sock := startServer(t, &Server{Exports: []Export{{Name: "disk", Device: d}}})
	c := dial(t, sock)
	c.open("disk", true)
	tests := []struct {
		name        string
		req         wire.Request
		payload     []byte
		wantFlushes int32
	}{
		{"write", wire.Request{Type: wire.CmdWrite, Length: 4}, []byte("abcd"), 0},
		{"write fua", wire.Request{Type: wire.CmdWrite, Flags: wire.CmdFlagFUA, Length: 4}, []byte("abcd"), 1},
		{"zero fua", wire.Request{Type: wire.CmdWriteZeroes, Flags: wire.CmdFlagFUA, Length: 512}, nil, 1},
		{"trim fua", wire.Request{Type: wire.CmdTrim, Flags: wire.CmdFlagFUA, Length: 512}, nil, 1},
		{"read fua", wire.Request{Type: wire.CmdRead, Flags: wire.CmdFlagFUA, Length: 512}, nil, 0},
		{"flush", wire.Request{Type: wire.CmdFlush}, nil, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := d.flushes.Load()
			if r := c.do(tc.req, tc.payload); r.errno != 0 {
				t.Fatalf("errno %d %s", r.errno, r.msg)
			}
			if got := d.flushes.Load() - before; got != tc.wantFlushes {
				t.Fatalf("%d flushes, want %d", got, tc.wantFlushes)
			}
		})
	}
}
