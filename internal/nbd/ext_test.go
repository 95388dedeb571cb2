package nbd

import (
	"bytes"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/nbd/wire"
)

// TestExtendedHeaders runs every command with extended headers: 32-byte
// requests, only extended reply chunks (never a simple reply), 64-bit
// effect lengths for WRITE_ZEROES, TRIM, CACHE and BLOCK_STATUS, block
// status replies of BLOCK_STATUS_EXT describing more than 4 GiB at once.
func TestExtendedHeaders(t *testing.T) {
	const size = 10 << 30
	sock, m := memServer(t, size)
	c := dial(t, sock)
	gotSize, flags := c.openExt("disk", wire.MetaContextBaseAllocation, wire.MetaContextAllocationDepth)
	if gotSize != size {
		t.Fatalf("size %d", gotSize)
	}
	for _, f := range []wire.TransmissionFlags{wire.FlagSendDF, wire.FlagBlockStatusPayload, wire.FlagSendWriteZeroes, wire.FlagSendTrim} {
		if flags&f == 0 {
			t.Fatalf("transmission flags %#x lack %#x", flags, f)
		}
	}
	ok := func(what string, r result) {
		t.Helper()
		if r.errno != 0 {
			t.Fatalf("%s: errno %d %q", what, r.errno, r.msg)
		}
	}
	data := randBytes(1 << 20)
	ok("write", c.do(wire.Request{Type: wire.CmdWrite, Offset: 6 << 30}, data))
	r := c.do(wire.Request{Type: wire.CmdRead, Offset: 6 << 30, Length: uint64(len(data))}, nil)
	ok("read", r)
	if !bytes.Equal(r.data, data) || len(r.chunks) != 1 || r.chunks[0] != wire.ReplyOffsetData {
		t.Fatalf("read back differs, chunks %v", r.chunks)
	}
	ok("flush", c.do(wire.Request{Type: wire.CmdFlush}, nil))
	ok("cache", c.do(wire.Request{Type: wire.CmdCache, Offset: 0, Length: 5 << 30}, nil))

	// Block status over the whole disk: hole, data at 6 GiB, hole; the
	// first descriptor alone is 6 GiB.
	r = c.do(wire.Request{Type: wire.CmdBlockStatus, Length: size}, nil)
	ok("block status", r)
	base := r.byID[baseAllocationID]
	hz := uint64(wire.StateHole | wire.StateZero)
	want := []wire.BlockDescriptor{{Length: 6 << 30, Flags: hz}, {Length: 1 << 20, Flags: 0}, {Length: size - 6<<30 - 1<<20, Flags: hz}}
	if !equalDescs(base, want) {
		t.Fatalf("base:allocation %v, want %v", base, want)
	}
	if len(r.byID[allocationDepthID]) == 0 {
		t.Fatalf("no qemu:allocation-depth chunk: %v", r.byID)
	}
	// REQ_ONE: one descriptor, no longer than asked.
	r = c.do(wire.Request{Type: wire.CmdBlockStatus, Flags: wire.CmdFlagReqOne, Length: 5 << 30}, nil)
	ok("block status req_one", r)
	if !equalDescs(r.byID[baseAllocationID], []wire.BlockDescriptor{{Length: 5 << 30, Flags: hz}}) {
		t.Fatalf("REQ_ONE: %v", r.byID)
	}

	// One write-zeroes and one trim of more than 4 GiB each.
	ok("write zeroes", c.do(wire.Request{Type: wire.CmdWriteZeroes, Offset: 1 << 30, Length: 5<<30 + 4096}, nil))
	r = c.do(wire.Request{Type: wire.CmdRead, Offset: 6 << 30, Length: 8192}, nil)
	ok("read zeroes", r)
	if !blockdev.IsZero(r.data[:4096]) || !bytes.Equal(r.data[4096:], data[4096:8192]) {
		t.Fatal("write zeroes over 4 GiB did not zero exactly its range")
	}
	ok("rewrite", c.do(wire.Request{Type: wire.CmdWrite, Offset: 6 << 30}, data))
	ok("trim", c.do(wire.Request{Type: wire.CmdTrim, Offset: 1 << 30, Length: 6 << 30}, nil))
	if p := make([]byte, 1<<20); func() bool { m.ReadAt(p, 6<<30); return !blockdev.IsZero(p) }() {
		t.Fatal("trim over 4 GiB left data")
	}

	// Errors come as chunks too.
	r = c.do(wire.Request{Type: wire.CmdWriteZeroes, Offset: 1 << 30, Length: size}, nil)
	if r.errno != wire.ENOSPC || r.chunks[0] != wire.ReplyError {
		t.Fatalf("write zeroes past the end: %+v", r)
	}
}

// TestExtendedPayloads: NBD_CMD_FLAG_PAYLOAD_LEN is required for WRITE,
// filters BLOCK_STATUS by context id, and is consumed and refused for
// commands without a payload form.
func TestExtendedPayloads(t *testing.T) {
	sock, m := memServer(t, 1<<20)
	m.WriteAt(randBytes(4096), 0) // one 64 KiB page of Mem
	c := dial(t, sock)
	c.openExt("disk", wire.MetaContextBaseAllocation, wire.MetaContextAllocationDepth)
	status := func(ids ...uint32) result {
		t.Helper()
		p := wire.AppendBlockStatusPayload(nil, 1<<20, ids)
		return c.do(wire.Request{Type: wire.CmdBlockStatus, Cookie: 9}, p)
	}
	for _, tc := range []struct {
		ids  []uint32
		want []uint32 // contexts answered; nil: EINVAL
	}{
		{[]uint32{baseAllocationID}, []uint32{baseAllocationID}},
		{[]uint32{allocationDepthID}, []uint32{allocationDepthID}},
		{[]uint32{allocationDepthID, baseAllocationID}, []uint32{baseAllocationID, allocationDepthID}},
		{[]uint32{baseAllocationID, baseAllocationID}, nil}, // repeated
		{[]uint32{7}, nil}, // unknown
		{[]uint32{}, nil},  // none
	} {
		r := status(tc.ids...)
		if tc.want == nil {
			if r.errno != wire.EINVAL {
				t.Fatalf("ids %v: %+v, want EINVAL", tc.ids, r)
			}
			continue
		}
		if r.errno != 0 || len(r.byID) != len(tc.want) {
			t.Fatalf("ids %v: %+v", tc.ids, r)
		}
		for _, id := range tc.want {
			if d := r.byID[id]; len(d) == 0 {
				t.Fatalf("ids %v: no chunk for %d", tc.ids, id)
			}
		}
		if d := r.byID[baseAllocationID]; d != nil && !equalDescs(d, []wire.BlockDescriptor{{Length: 64 << 10}, {Length: 1<<20 - 64<<10, Flags: uint64(wire.StateHole | wire.StateZero)}}) {
			t.Fatalf("ids %v: descriptors %v", tc.ids, d)
		}
	}
	// A payload where none belongs is read and refused; the connection goes on.
	var h [wire.ExtRequestSize]byte
	wire.PutExtRequest(&h, wire.Request{Type: wire.CmdTrim, Flags: wire.CmdFlagPayloadLen, Cookie: 3, Length: 5})
	c.write(append(h[:], "junk!"...))
	if r := c.recv(nil); r.cookie != 3 || r.errno != wire.EINVAL {
		t.Fatalf("trim with payload: %+v", r)
	}
	// A write without PAYLOAD_LEN still carries its data, as qemu 10
	// sends it (the spec says the flag MUST be set; qemu does not).
	wire.PutExtRequest(&h, wire.Request{Type: wire.CmdWrite, Cookie: 4, Offset: 8192, Length: 5})
	c.write(append(h[:], "qemu!"...))
	if r := c.recv(nil); r.cookie != 4 || r.errno != 0 {
		t.Fatalf("write without PAYLOAD_LEN: %+v", r)
	}
	if got := make([]byte, 5); func() bool { m.ReadAt(got, 8192); return string(got) != "qemu!" }() {
		t.Fatal("write without PAYLOAD_LEN not written")
	}
	if r := c.do(wire.Request{Type: wire.CmdFlush, Cookie: 5}, nil); r.errno != 0 || r.chunks[0] != wire.ReplyNone {
		t.Fatalf("flush after refusals: %+v", r)
	}
	// A payload over the maximum ends the connection.
	wire.PutExtRequest(&h, wire.Request{Type: wire.CmdWrite, Flags: wire.CmdFlagPayloadLen, Cookie: 6, Length: DefaultMaxPayload + 1})
	c.write(h[:])
	c.expectClosed()
}

// TestExtendedNegotiation: the option's rules and what it changes.
func TestExtendedNegotiation(t *testing.T) {
	sock, _ := memServer(t, 1<<20)
	c := dial(t, sock)
	c.greet(wire.ClientFixedNewstyle | wire.ClientNoZeroes)
	c.expectRep(wire.OptExtendedHeaders, []byte{0}, wire.RepErrInvalid)
	c.expectRep(wire.OptStructuredReply, nil, wire.RepAck) // structured first is allowed
	c.expectRep(wire.OptExtendedHeaders, nil, wire.RepAck)
	c.expectRep(wire.OptExtendedHeaders, nil, wire.RepErrInvalid)
	c.expectRep(wire.OptStructuredReply, nil, wire.RepErrExtHeaderReqd)
	c.ext = true
	// Without meta contexts: no BLOCK_STATUS_PAYLOAD flag.
	if _, flags := c.goExport("disk"); flags&wire.FlagBlockStatusPayload != 0 || flags&wire.FlagSendDF == 0 {
		t.Fatalf("flags %#x", flags)
	}
	if r := c.do(wire.Request{Type: wire.CmdRead, Length: 0}, nil); r.errno != 0 || r.chunks[0] != wire.ReplyNone {
		t.Fatalf("empty read: %+v", r)
	}
	if r := c.do(wire.Request{Type: wire.CmdBlockStatus, Length: 512}, nil); r.errno != wire.EINVAL {
		t.Fatalf("block status without contexts: %+v", r)
	}

	// EXPORT_NAME after extended headers is a protocol violation.
	d := dial(t, sock)
	d.greet(wire.ClientFixedNewstyle | wire.ClientNoZeroes)
	d.expectRep(wire.OptExtendedHeaders, nil, wire.RepAck)
	d.opt(wire.OptExportName, []byte("disk"))
	d.expectClosed()
}

func equalDescs(a, b []wire.BlockDescriptor) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
