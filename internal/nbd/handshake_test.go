package nbd

import (
	"errors"
	"strings"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/nbd/wire"
)

func TestOptions(t *testing.T) {
	sock, _ := memServer(t, 1<<20)
	tests := []struct {
		name string
		run  func(t *testing.T, c *client)
	}{
		{"list", func(t *testing.T, c *client) {
			reps := c.optAll(wire.OptList, nil)
			if len(reps) != 2 || reps[0].Type != wire.RepServer || reps[1].Type != wire.RepAck {
				t.Fatalf("replies %+v", reps)
			}
			name, desc, err := wire.DecodeRepServer(reps[0].Data)
			if err != nil || name != "disk" || desc != "a test disk" {
				t.Fatalf("server reply %q %q %v", name, desc, err)
			}
			c.expectRep(wire.OptList, []byte{1}, wire.RepErrInvalid)
		}},
		{"info", func(t *testing.T, c *client) {
			reps := c.optAll(wire.OptInfo, wire.AppendInfoRequest(nil, wire.InfoRequest{Name: "disk", Infos: []wire.InfoType{wire.InfoName, wire.InfoDescription, wire.InfoBlockSize}}))
			got := map[wire.InfoType]wire.Info{}
			for _, r := range reps[:len(reps)-1] {
				in, err := wire.DecodeInfo(r.Data)
				if err != nil || r.Type != wire.RepInfo {
					t.Fatalf("reply %+v: %v", r, err)
				}
				got[in.Type] = in
			}
			if reps[len(reps)-1].Type != wire.RepAck {
				t.Fatalf("last reply %+v", reps[len(reps)-1])
			}
			if e := got[wire.InfoExport]; e.Size != 1<<20 || e.Flags&wire.FlagHasFlags == 0 {
				t.Fatalf("export info %+v", e)
			}
			if got[wire.InfoName].Name != "disk" || got[wire.InfoDescription].Description != "a test disk" {
				t.Fatalf("name/description %+v", got)
			}
			if bs := got[wire.InfoBlockSize].BlockSize; bs != (wire.BlockSize{Min: 1, Preferred: 4096, Max: DefaultMaxPayload}) {
				t.Fatalf("block size %+v", bs)
			}
			// INFO does not end negotiation: GO still works.
			if size, _ := c.goExport("disk"); size != 1<<20 {
				t.Fatalf("size %d", size)
			}
		}},
		{"info unknown export", func(t *testing.T, c *client) {
			c.expectRep(wire.OptInfo, wire.AppendInfoRequest(nil, wire.InfoRequest{Name: "nope"}), wire.RepErrUnknown)
			c.expectRep(wire.OptGo, wire.AppendInfoRequest(nil, wire.InfoRequest{Name: "nope"}), wire.RepErrUnknown)
			c.expectRep(wire.OptGo, []byte{0, 0, 0, 9}, wire.RepErrInvalid)
		}},
		{"default export", func(t *testing.T, c *client) {
			if size, _ := c.goExport(""); size != 1<<20 {
				t.Fatalf("size %d", size)
			}
		}},
		{"unknown options", func(t *testing.T, c *client) {
			for _, o := range []wire.Opt{wire.OptPeekExport, 12, 99, 1 << 31} {
				c.expectRep(o, []byte("junk"), wire.RepErrUnsup)
			}
			if size, _ := c.goExport("disk"); size != 1<<20 {
				t.Fatalf("size %d", size)
			}
		}},
		{"oversized option", func(t *testing.T, c *client) {
			c.write(wire.AppendOption(nil, wire.OptInfo, make([]byte, wire.MaxOptionLen+1)))
			if r := c.optReply(); r.Type != wire.RepErrTooBig {
				t.Fatalf("reply %+v", r)
			}
			c.expectRep(wire.OptStructuredReply, nil, wire.RepAck)
		}},
		{"structured reply with data", func(t *testing.T, c *client) {
			c.expectRep(wire.OptStructuredReply, []byte{0}, wire.RepErrInvalid)
		}},
		{"starttls without tls", func(t *testing.T, c *client) {
			c.expectRep(wire.OptStartTLS, nil, wire.RepErrPolicy)
		}},
		{"meta context", func(t *testing.T, c *client) {
			req := func(name string, q ...string) []byte {
				return wire.AppendMetaContextRequest(nil, wire.MetaContextRequest{Name: name, Queries: q})
			}
			c.expectRep(wire.OptSetMetaContext, req("disk", "base:allocation"), wire.RepErrInvalid) // before STRUCTURED_REPLY
			c.expectRep(wire.OptStructuredReply, nil, wire.RepAck)
			for _, tc := range []struct {
				q    []string
				want []string
			}{
				{nil, []string{wire.MetaContextBaseAllocation, wire.MetaContextAllocationDepth}},
				{[]string{"base:"}, []string{wire.MetaContextBaseAllocation}},
				{[]string{"qemu:"}, []string{wire.MetaContextAllocationDepth}},
				{[]string{wire.MetaContextBaseAllocation}, []string{wire.MetaContextBaseAllocation}},
				{[]string{"qemu:dirty-bitmap:x", "base:allocation"}, []string{wire.MetaContextBaseAllocation}},
				{[]string{"qemu:allocation-depth"}, []string{wire.MetaContextAllocationDepth}},
			} {
				reps := c.optAll(wire.OptListMetaContext, req("disk", tc.q...))
				if len(reps) != len(tc.want)+1 {
					t.Fatalf("list %q: %+v", tc.q, reps)
				}
				for i, w := range tc.want {
					if id, n, err := wire.DecodeMetaContext(reps[i].Data); reps[i].Type != wire.RepMetaContext || err != nil || n != w || id != 0 {
						t.Fatalf("list %q: reply %d: %d %q %v, want %q", tc.q, i, id, n, err, w)
					}
				}
			}
			c.expectRep(wire.OptListMetaContext, req("disk", "qemu:dirty-bitmap:x"), wire.RepAck)
			c.expectRep(wire.OptSetMetaContext, req("disk", "base:"), wire.RepAck) // no wildcard when setting
			c.expectRep(wire.OptSetMetaContext, req("nope", "base:allocation"), wire.RepErrUnknown)
			c.expectRep(wire.OptSetMetaContext, req("disk", "nonamespace"), wire.RepErrInvalid)
			c.expectRep(wire.OptSetMetaContext, []byte{1, 2}, wire.RepErrInvalid)
			reps := c.optAll(wire.OptSetMetaContext, req("disk", "base:allocation"))
			id, _, err := wire.DecodeMetaContext(reps[0].Data)
			if len(reps) != 2 || err != nil || id != baseAllocationID {
				t.Fatalf("set: %+v %v", reps, err)
			}
			reps = c.optAll(wire.OptSetMetaContext, req("disk", "qemu:allocation-depth", "base:allocation"))
			if len(reps) != 3 {
				t.Fatalf("set both: %+v", reps)
			}
			for i, want := range []uint32{baseAllocationID, allocationDepthID} {
				if id, _, err := wire.DecodeMetaContext(reps[i].Data); err != nil || id != want {
					t.Fatalf("set both: reply %d: id %d %v, want %d", i, id, err, want)
				}
			}
		}},
		{"abort", func(t *testing.T, c *client) {
			c.expectRep(wire.OptAbort, nil, wire.RepAck)
			c.expectClosed()
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, sock)
			c.greet(wire.ClientFixedNewstyle | wire.ClientNoZeroes)
			tc.run(t, c)
		})
	}
}

func TestExportName(t *testing.T) {
	sock, _ := memServer(t, 1<<20)
	for _, noZeroes := range []bool{false, true} {
		c := dial(t, sock)
		flags := wire.ClientFixedNewstyle
		if noZeroes {
			flags |= wire.ClientNoZeroes
		}
		c.greet(flags)
		c.opt(wire.OptExportName, []byte("disk"))
		size, tf, err := wire.ReadExportNameReply(c.br, noZeroes)
		if err != nil || size != 1<<20 || tf&wire.FlagHasFlags == 0 {
			t.Fatalf("noZeroes=%v: %d %#x %v", noZeroes, size, tf, err)
		}
		if r := c.do(wire.Request{Type: wire.CmdRead, Length: 512}, nil); r.errno != 0 || len(r.data) != 512 {
			t.Fatalf("read after EXPORT_NAME: %+v", r)
		}
	}
	// An unknown name cannot be refused with an error: the session ends.
	c := dial(t, sock)
	c.greet(wire.ClientFixedNewstyle)
	c.opt(wire.OptExportName, []byte("nope"))
	c.expectClosed()
}

func TestBadClientFlags(t *testing.T) {
	sock, _ := memServer(t, 1<<20)
	c := dial(t, sock)
	c.greet(1 << 5)
	c.expectClosed()
}

func TestHandshakeGarbage(t *testing.T) {
	sock, _ := memServer(t, 1<<20)
	c := dial(t, sock)
	c.greet(wire.ClientFixedNewstyle)
	c.write([]byte("GET / HTTP/1.1\r\n\r\n"))
	c.expectClosed()
	// The server goes on.
	c = dial(t, sock)
	if size, _ := c.open("disk", false); size != 1<<20 {
		t.Fatalf("size %d", size)
	}
}

// plainDev hides every optional capability of a Device.
type plainDev struct{ blockdev.Device }

func TestTransmissionFlags(t *testing.T) {
	m := blockdev.NewMem(1 << 20)
	sock := startServer(t, &Server{Exports: []Export{
		{Name: "mem", Device: m},
		{Name: "ro", Device: m, ReadOnly: true},
		{Name: "rodev", Device: blockdev.ReadOnly(m)},
		{Name: "plain", Device: plainDev{m}},
	}})
	const always = wire.FlagHasFlags | wire.FlagSendFlush | wire.FlagSendCache | wire.FlagCanMultiConn
	const rw = always | wire.FlagSendFUA | wire.FlagSendWriteZeroes
	tests := []struct {
		export     string
		structured bool
		want       wire.TransmissionFlags
	}{
		{"mem", false, rw | wire.FlagSendTrim | wire.FlagSendFastZero},
		{"mem", true, rw | wire.FlagSendTrim | wire.FlagSendFastZero | wire.FlagSendDF},
		{"ro", false, always | wire.FlagReadOnly},
		{"rodev", false, always | wire.FlagReadOnly},
		{"plain", false, rw},
		{"plain", true, rw | wire.FlagSendDF},
	}
	for _, tc := range tests {
		t.Run(tc.export, func(t *testing.T) {
			c := dial(t, sock)
			if _, f := c.open(tc.export, tc.structured); f != tc.want {
				t.Fatalf("flags %#x, want %#x", f, tc.want)
			}
		})
	}
}

func TestServerConfigErrors(t *testing.T) {
	m := blockdev.NewMem(4096)
	tests := []struct {
		name string
		srv  *Server
		want error
	}{
		{"no exports", &Server{}, ErrNoExports},
		{"nil device", &Server{Exports: []Export{{Name: "a"}}}, ErrBadExport},
		{"duplicate", &Server{Exports: []Export{{Name: "a", Device: m}, {Name: "a", Device: m}}}, ErrBadExport},
		{"bad name", &Server{Exports: []Export{{Name: "a\x00", Device: m}}}, ErrBadExport},
		{"long name", &Server{Exports: []Export{{Name: strings.Repeat("a", 5000), Device: m}}}, ErrBadExport},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c1, c2 := netPipe(t)
			defer c2.Close()
			if err := tc.srv.ServeConn(t.Context(), c1); !errors.Is(err, tc.want) {
				t.Fatalf("ServeConn = %v, want %v", err, tc.want)
			}
		})
	}
	if err := (&Server{Exports: []Export{{Device: m}}, MaxPayload: 1000}).init(); err == nil {
		t.Fatal("MaxPayload 1000 accepted")
	}
}
