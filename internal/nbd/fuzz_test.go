package nbd

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/nbd/wire"
)

// FuzzServeConn feeds arbitrary client bytes to a server: whatever comes,
// it must neither panic nor hang, and must end when the client hangs up.
func FuzzServeConn(f *testing.F) {
	hello := be32(uint32(wire.ClientFixedNewstyle | wire.ClientNoZeroes))
	goDisk := wire.AppendOption(nil, wire.OptGo, wire.AppendInfoRequest(nil, wire.InfoRequest{Name: "disk"}))
	sr := wire.AppendOption(nil, wire.OptStructuredReply, nil)
	meta := wire.AppendOption(nil, wire.OptSetMetaContext, wire.AppendMetaContextRequest(nil, wire.MetaContextRequest{Name: "disk", Queries: []string{"base:allocation"}}))
	req := func(r wire.Request, payload ...byte) []byte {
		var b [wire.RequestSize]byte
		wire.PutRequest(&b, r)
		return append(b[:], payload...)
	}
	cat := func(parts ...[]byte) []byte {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	f.Add(cat(hello, goDisk, req(wire.Request{Type: wire.CmdRead, Length: 4096})))
	f.Add(cat(hello, sr, meta, goDisk,
		req(wire.Request{Type: wire.CmdWrite, Cookie: 1, Offset: 10, Length: 3}, 1, 2, 3),
		req(wire.Request{Type: wire.CmdBlockStatus, Cookie: 2, Length: 1 << 20}),
		req(wire.Request{Type: wire.CmdRead, Cookie: 3, Flags: wire.CmdFlagDF, Length: 100}),
		req(wire.Request{Type: wire.CmdWriteZeroes, Cookie: 4, Flags: wire.CmdFlagFastZero, Length: 512}),
		req(wire.Request{Type: wire.CmdTrim, Cookie: 5, Length: 512}),
		req(wire.Request{Type: wire.CmdDisc})))
	f.Add(cat(hello, wire.AppendOption(nil, wire.OptList, nil), wire.AppendOption(nil, wire.OptExportName, []byte("disk")),
		req(wire.Request{Type: wire.CmdWrite, Length: 1 << 30})))
	f.Add(cat(hello, wire.AppendOption(nil, 77, []byte("x")), wire.AppendOption(nil, wire.OptAbort, nil)))
	// Extended headers: 64-bit effect lengths and payloads.
	eh := wire.AppendOption(nil, wire.OptExtendedHeaders, nil)
	ext := func(r wire.Request, payload ...byte) []byte {
		var b [wire.ExtRequestSize]byte
		wire.PutExtRequest(&b, r)
		return append(b[:], payload...)
	}
	f.Add(cat(hello, eh, meta, goDisk,
		ext(wire.Request{Type: wire.CmdWrite, Flags: wire.CmdFlagPayloadLen, Cookie: 1, Offset: 10, Length: 3}, 1, 2, 3),
		ext(wire.Request{Type: wire.CmdWrite, Cookie: 2, Offset: 10, Length: 2}, 4, 5),
		ext(wire.Request{Type: wire.CmdBlockStatus, Cookie: 3, Length: 1 << 40}),
		ext(wire.Request{Type: wire.CmdBlockStatus, Flags: wire.CmdFlagPayloadLen, Cookie: 4, Length: 12}, wire.AppendBlockStatusPayload(nil, 1<<20, []uint32{1})...),
		ext(wire.Request{Type: wire.CmdTrim, Flags: wire.CmdFlagPayloadLen, Cookie: 5, Length: 2}, 9, 9),
		ext(wire.Request{Type: wire.CmdWriteZeroes, Cookie: 6, Length: 5 << 30}),
		ext(wire.Request{Type: wire.CmdRead, Cookie: 7, Length: 100}),
		ext(wire.Request{Type: wire.CmdDisc})))
	f.Add(cat(hello, sr, eh, wire.AppendOption(nil, wire.OptListMetaContext, wire.AppendMetaContextRequest(nil, wire.MetaContextRequest{Name: "disk", Queries: []string{"base:", "qemu:", "x-a:b"}})),
		wire.AppendOption(nil, wire.OptExportName, []byte("disk"))))
	// Recorded client streams: testdata/qemu10-client.bin is what qemu-io
	// 10 sent to vdisk serve (extended headers, base:allocation, write,
	// write-zeroes, discard, read, flush, block status, disconnect).
	recorded, _ := filepath.Glob("testdata/*.bin")
	if len(recorded) == 0 {
		f.Fatal("no recorded client streams in testdata")
	}
	for _, name := range recorded {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	m := blockdev.NewMem(1 << 20)
	srv := &Server{Exports: []Export{{Name: "disk", Device: m}}, MaxPayload: 1 << 20}
	f.Fuzz(func(t *testing.T, in []byte) {
		server, client := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			srv.ServeConn(context.Background(), server)
		}()
		drained := make(chan struct{})
		go func() {
			defer close(drained)
			io.Copy(io.Discard, client)
		}()
		client.Write(in) // fails once the server has closed; that is fine
		client.Close()
		<-done
		<-drained
	})
}

// TestReplayQemu10: the recorded stream of a qemu-io 10 session, replayed
// to the server, is answered with extended replies only and no errors.
func TestReplayQemu10(t *testing.T) {
	b, err := os.ReadFile("testdata/qemu10-client.bin")
	if err != nil {
		t.Fatal(err)
	}
	sock, _ := memServer(t, 64<<20)
	c := dial(t, sock)
	if _, err := wire.ReadGreeting(c.br); err != nil {
		t.Fatal(err)
	}
	c.write(b)
	// Option replies up to GO's ACK, then transmission replies to EOF.
	for {
		r, err := wire.ReadOptionReply(c.br)
		if err != nil {
			t.Fatal(err)
		}
		if r.Type.IsError() {
			t.Fatalf("option %d refused: %q", r.Opt, r.Data)
		}
		if r.Opt == wire.OptGo && r.Type == wire.RepAck {
			break
		}
	}
	n := 0
	for {
		rep, err := wire.ReadReply(c.br, 64<<20)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if rep.Simple || !rep.Chunk.Extended || rep.Chunk.Type.IsError() {
			t.Fatalf("reply %+v", rep)
		}
		n++
	}
	if n < 6 {
		t.Fatalf("%d replies", n)
	}
}
