package kernel

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"vdisk/internal/blockdev"
	"vdisk/internal/nbd"
	"vdisk/internal/nbd/wire"
)

// cmdRead is NBD_CMD_READ.
const cmdRead = 0

// serve runs an nbd.Server on one end of a pipe and returns the other.
func serve(t *testing.T, exports ...nbd.Export) net.Conn {
	t.Helper()
	srv := &nbd.Server{Exports: exports}
	c, s := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ServeConn(context.Background(), s)
	}()
	t.Cleanup(func() {
		c.Close()
		<-done
	})
	c.SetDeadline(time.Now().Add(time.Minute))
	return c
}

// TestHandshakeWithServer does the handshake against the project's NBD
// server, then one READ in the transmission phase with a simple reply: the
// state the kernel takes the socket over in.
func TestHandshakeWithServer(t *testing.T) {
	mem := blockdev.NewMem(1 << 20)
	if _, err := mem.WriteAt([]byte("hello"), 4096); err != nil {
		t.Fatal(err)
	}
	c := serve(t, nbd.Export{Name: "disk", Device: mem}, nbd.Export{Name: "ro", Device: blockdev.NewMem(1 << 20), ReadOnly: true})
	ex, err := Handshake(c, "disk")
	if err != nil {
		t.Fatal(err)
	}
	if ex.Size != 1<<20 {
		t.Fatalf("size %d", ex.Size)
	}
	for _, f := range []Flags{FlagHasFlags, FlagFlush, FlagFUA, FlagTrim, FlagMultiConn} {
		if ex.Flags&f == 0 {
			t.Errorf("flags %#x lack %#x", ex.Flags, f)
		}
	}
	if ex.Flags&FlagReadOnly != 0 {
		t.Errorf("writable export flagged read-only: %#x", ex.Flags)
	}
	if bs := ex.BlockSize(4096); bs < 512 || bs > 4096 {
		t.Errorf("block size %d", bs)
	}
	req := binary.BigEndian.AppendUint32(nil, 0x25609513)
	req = binary.BigEndian.AppendUint16(req, 0)            // flags
	req = binary.BigEndian.AppendUint16(req, cmdRead)      // type
	req = binary.BigEndian.AppendUint64(req, 0x1122334455) // handle
	req = binary.BigEndian.AppendUint64(req, 4096)
	req = binary.BigEndian.AppendUint32(req, 5)
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	rep := make([]byte, 16+5)
	if _, err := io.ReadFull(c, rep); err != nil {
		t.Fatal(err)
	}
	if binary.BigEndian.Uint32(rep) != 0x67446698 || binary.BigEndian.Uint32(rep[4:]) != 0 ||
		binary.BigEndian.Uint64(rep[8:]) != 0x1122334455 || string(rep[16:]) != "hello" {
		t.Fatalf("simple reply %x", rep)
	}
}

func TestHandshakeReadOnlyAndUnknown(t *testing.T) {
	c := serve(t, nbd.Export{Name: "ro", Device: blockdev.NewMem(1 << 20), ReadOnly: true})
	ex, err := Handshake(c, "ro")
	if err != nil || ex.Flags&FlagReadOnly == 0 {
		t.Fatalf("Handshake(ro) = %+v, %v; want read-only", ex, err)
	}
	c = serve(t, nbd.Export{Name: "disk", Device: blockdev.NewMem(1 << 20)})
	if _, err := Handshake(c, "nope"); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("Handshake(unknown) = %v, want refused", err)
	}
}

// oldServer is a server transcript without NBD_OPT_GO: it answers
// ERR_UNSUP, then NBD_OPT_EXPORT_NAME.
func oldServer(size uint64, flags wire.TransmissionFlags) []byte {
	b := wire.AppendGreeting(nil, wire.FlagFixedNewstyle)
	b = wire.AppendOptionReply(b, wire.OptGo, wire.RepErrUnsup, nil)
	return wire.AppendExportNameReply(b, size, flags, false)
}

// goServer is a server transcript that answers NBD_OPT_GO.
func goServer(size uint64, flags wire.TransmissionFlags, bs wire.BlockSize) []byte {
	b := wire.AppendGreeting(nil, wire.FlagFixedNewstyle|wire.FlagNoZeroes)
	b = wire.AppendOptionReply(b, wire.OptGo, wire.RepInfo, wire.AppendInfoBlockSize(nil, bs))
	b = wire.AppendOptionReply(b, wire.OptGo, wire.RepInfo, wire.AppendInfoExport(nil, size, flags))
	return wire.AppendOptionReply(b, wire.OptGo, wire.RepAck, nil)
}

type transcript struct {
	io.Reader
	sent bytes.Buffer
}

func (t *transcript) Write(p []byte) (int, error) { return t.sent.Write(p) }

func TestHandshakeTranscripts(t *testing.T) {
	tests := []struct {
		name    string
		server  []byte
		want    Export
		wantErr string
		sentHas []byte // a byte string the client must have sent
	}{
		{
			name: "NBD_OPT_GO with block sizes", server: goServer(8<<20, 0x1ed, wire.BlockSize{Min: 512, Preferred: 4096, Max: 32 << 20}),
			want: Export{Size: 8 << 20, Flags: 0x1ed, MinBlock: 512, PreferredBlock: 4096}, sentHas: []byte("disk"),
		},
		{
			name: "fallback to NBD_OPT_EXPORT_NAME", server: oldServer(1<<20, 0x3),
			want: Export{Size: 1 << 20, Flags: 0x3}, sentHas: []byte{0, 0, 0, 1, 0, 0, 0, 4, 'd', 'i', 's', 'k'},
		},
		{name: "oldstyle server", server: append([]byte("NBDMAGIC"), make([]byte, 10)...), wantErr: "magic"},
		{name: "not fixed newstyle", server: wire.AppendGreeting(nil, 0), wantErr: "fixed newstyle"},
		{name: "ack without export info", server: wire.AppendOptionReply(wire.AppendGreeting(nil, wire.FlagFixedNewstyle), wire.OptGo, wire.RepAck, nil), wantErr: "without NBD_INFO_EXPORT"},
		{name: "zero size", server: goServer(0, 1, wire.BlockSize{}), wantErr: "0 bytes"},
		{name: "truncated", server: goServer(1<<20, 1, wire.BlockSize{})[:30], wantErr: "EOF"},
		{name: "error reply with text", server: wire.AppendOptionReply(wire.AppendGreeting(nil, wire.FlagFixedNewstyle), wire.OptGo, wire.RepErrPolicy, []byte("no\x01way")), wantErr: `"no?way"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := &transcript{Reader: bytes.NewReader(tt.server)}
			got, err := Handshake(tr, "disk")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Handshake = %+v, %v; want an error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Handshake = %+v, %v; want %+v", got, err, tt.want)
			}
			if !bytes.Contains(tr.sent.Bytes(), tt.sentHas) {
				t.Fatalf("client sent %x, want it to contain %x", tr.sent.Bytes(), tt.sentHas)
			}
		})
	}
}

func TestExportBlockSize(t *testing.T) {
	tests := []struct {
		name string
		ex   Export
		want int64
	}{
		{name: "none sent", ex: Export{Size: 1 << 20}, want: 512},
		{name: "preferred 4k", ex: Export{Size: 1 << 20, MinBlock: 512, PreferredBlock: 4096}, want: 4096},
		{name: "preferred above a page", ex: Export{Size: 1 << 20, MinBlock: 1024, PreferredBlock: 1 << 20}, want: 1024},
		{name: "preferred does not divide the size", ex: Export{Size: 5 << 10, MinBlock: 512, PreferredBlock: 4096}, want: 512},
		{name: "minimum 1, preferred 2 MiB", ex: Export{Size: 1 << 20, MinBlock: 1, PreferredBlock: 2 << 20}, want: 512},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.ex.BlockSize(4096); got != tt.want {
				t.Fatalf("BlockSize = %d, want %d", got, tt.want)
			}
		})
	}
}

func FuzzHandshake(f *testing.F) {
	f.Add(goServer(8<<20, 0x1ed, wire.BlockSize{Min: 512, Preferred: 4096, Max: 1 << 25}))
	f.Add(oldServer(1<<20, 3))
	f.Add(wire.AppendGreeting(nil, wire.FlagFixedNewstyle))
	f.Fuzz(func(t *testing.T, server []byte) {
		tr := &transcript{Reader: bytes.NewReader(server)}
		ex, err := Handshake(tr, "disk")
		if err == nil && ex.Size <= 0 {
			t.Fatalf("accepted size %d", ex.Size)
		}
	})
}

// TestAttachWithoutKernel runs Attach where the kernel has no NBD client
// (this host): the handshakes over real socketpairs succeed, Connect says
// ErrUnavailable, and everything Attach started is stopped. An unknown
// export fails in the handshake.
func TestAttachWithoutKernel(t *testing.T) {
	if _, err := Available(); err == nil {
		t.Skip("this kernel has an NBD client")
	}
	srv := &nbd.Server{Exports: []nbd.Export{{Name: "disk", Device: blockdev.NewMem(1 << 20)}}}
	ctx := context.Background()
	if _, err := Attach(ctx, srv, AttachOptions{Export: "disk", Connections: 2, Index: -1}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Attach = %v, want ErrUnavailable", err)
	}
	if _, err := Attach(ctx, srv, AttachOptions{Export: "nope", Index: -1}); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("Attach(unknown export) = %v, want refused", err)
	}
	if _, err := Attach(ctx, srv, AttachOptions{Export: "disk", Connections: MaxSockets + 1}); err == nil {
		t.Fatal("Attach with too many connections succeeded")
	}
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}
