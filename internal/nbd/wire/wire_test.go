package wire

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
)

func TestGreetingRoundTrip(t *testing.T) {
	b := AppendGreeting(nil, FlagFixedNewstyle|FlagNoZeroes)
	if len(b) != GreetingSize {
		t.Fatalf("greeting is %d bytes, want %d", len(b), GreetingSize)
	}
	f, err := ReadGreeting(bytes.NewReader(b))
	if err != nil || f != FlagFixedNewstyle|FlagNoZeroes {
		t.Fatalf("ReadGreeting = %v, %v", f, err)
	}
	b[3] ^= 1
	if _, err := ReadGreeting(bytes.NewReader(b)); !errors.Is(err, ErrBadMagic) {
		t.Fatalf("corrupt greeting: err = %v, want ErrBadMagic", err)
	}
}

func TestOptionRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		opt  Opt
		data []byte
	}{
		{"empty", OptList, nil},
		{"export name", OptExportName, []byte("disk")},
		{"info", OptGo, AppendInfoRequest(nil, InfoRequest{Name: "x", Infos: []InfoType{InfoBlockSize}})},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := AppendOption(nil, tc.opt, tc.data)
			h, data, err := ReadOption(bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			if h.Opt != tc.opt || int(h.Len) != len(tc.data) || !bytes.Equal(data, tc.data) {
				t.Fatalf("got %+v %q, want %d %q", h, data, tc.opt, tc.data)
			}
		})
	}
}

func TestReadOptionTooLong(t *testing.T) {
	var b []byte
	b = be.AppendUint64(b, OptMagic)
	b = be.AppendUint32(b, uint32(OptGo))
	b = be.AppendUint32(b, MaxOptionLen+1)
	h, _, err := ReadOption(bytes.NewReader(b))
	if !errors.Is(err, ErrTooLong) || h.Len != MaxOptionLen+1 || h.Opt != OptGo {
		t.Fatalf("ReadOption = %+v, %v; want header and ErrTooLong", h, err)
	}
}

func TestInfoRequest(t *testing.T) {
	tests := []struct {
		name    string
		data    []byte
		want    InfoRequest
		wantErr error
	}{
		{"default export", AppendInfoRequest(nil, InfoRequest{}), InfoRequest{}, nil},
		{"named", AppendInfoRequest(nil, InfoRequest{Name: "disk", Infos: []InfoType{InfoName, InfoBlockSize}}),
			InfoRequest{Name: "disk", Infos: []InfoType{InfoName, InfoBlockSize}}, nil},
		{"truncated", []byte{0, 0, 0, 5, 'a'}, InfoRequest{}, ErrMalformed},
		{"count mismatch", []byte{0, 0, 0, 0, 0, 2, 0, 1}, InfoRequest{}, ErrMalformed},
		{"trailing", append(AppendInfoRequest(nil, InfoRequest{}), 0), InfoRequest{}, ErrMalformed},
		{"nul in name", AppendInfoRequest(nil, InfoRequest{Name: "a\x00b"}), InfoRequest{}, ErrBadString},
		{"bad utf8", AppendInfoRequest(nil, InfoRequest{Name: "\xff"}), InfoRequest{}, ErrBadString},
		{"name too long", AppendInfoRequest(nil, InfoRequest{Name: strings.Repeat("a", MaxStringLen+1)}), InfoRequest{}, ErrTooLong},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeInfoRequest(tc.data)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestMetaContextRequest(t *testing.T) {
	req := MetaContextRequest{Name: "disk", Queries: []string{"base:allocation", "qemu:"}}
	got, err := DecodeMetaContextRequest(AppendMetaContextRequest(nil, req))
	if err != nil || !reflect.DeepEqual(got, req) {
		t.Fatalf("round trip = %+v, %v", got, err)
	}
	many := MetaContextRequest{Queries: make([]string, MaxQueries+1)}
	if _, err := DecodeMetaContextRequest(AppendMetaContextRequest(nil, many)); !errors.Is(err, ErrTooLong) {
		t.Fatalf("too many queries: err = %v", err)
	}
	// A huge query count with no data must fail without allocating.
	if _, err := DecodeMetaContextRequest([]byte{0, 0, 0, 0, 0, 0, 0, 100}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("missing queries: err = %v", err)
	}
}

func TestInfoReplies(t *testing.T) {
	tests := []struct {
		name string
		data []byte
		want Info
	}{
		{"export", AppendInfoExport(nil, 1<<40, FlagHasFlags|FlagSendFlush), Info{Type: InfoExport, Size: 1 << 40, Flags: FlagHasFlags | FlagSendFlush}},
		{"name", AppendInfoName(nil, "disk"), Info{Type: InfoName, Name: "disk"}},
		{"description", AppendInfoDescription(nil, "a disk"), Info{Type: InfoDescription, Description: "a disk"}},
		{"block size", AppendInfoBlockSize(nil, BlockSize{1, 4096, 32 << 20}), Info{Type: InfoBlockSize, BlockSize: BlockSize{1, 4096, 32 << 20}}},
		{"unknown", []byte{0, 9, 1, 2, 3}, Info{Type: 9}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeInfo(tc.data)
			if err != nil || got != tc.want {
				t.Fatalf("DecodeInfo = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
	if _, err := DecodeInfo([]byte{0, 0, 1}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("short export info: err = %v", err)
	}
}

func TestRepServerAndMetaContext(t *testing.T) {
	n, d, err := DecodeRepServer(AppendRepServer(nil, "disk", "my disk"))
	if err != nil || n != "disk" || d != "my disk" {
		t.Fatalf("DecodeRepServer = %q %q %v", n, d, err)
	}
	if _, _, err := DecodeRepServer([]byte{0, 0, 0, 9, 'a'}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("bad server reply: err = %v", err)
	}
	id, name, err := DecodeMetaContext(AppendMetaContext(nil, 7, MetaContextBaseAllocation))
	if err != nil || id != 7 || name != MetaContextBaseAllocation {
		t.Fatalf("DecodeMetaContext = %d %q %v", id, name, err)
	}
}

func TestOptionReplyRoundTrip(t *testing.T) {
	b := AppendOptionReply(nil, OptInfo, RepErrUnknown, []byte("no such export"))
	rep, err := ReadOptionReply(bytes.NewReader(b))
	if err != nil || rep.Opt != OptInfo || rep.Type != RepErrUnknown || string(rep.Data) != "no such export" {
		t.Fatalf("ReadOptionReply = %+v, %v", rep, err)
	}
	if !rep.Type.IsError() || RepAck.IsError() {
		t.Fatal("IsError is wrong")
	}
}

func TestExportNameReply(t *testing.T) {
	for _, nz := range []bool{false, true} {
		b := AppendExportNameReply(nil, 12345, FlagHasFlags|FlagReadOnly, nz)
		size, flags, err := ReadExportNameReply(bytes.NewReader(b), nz)
		if err != nil || size != 12345 || flags != FlagHasFlags|FlagReadOnly {
			t.Fatalf("noZeroes=%v: %d %d %v", nz, size, flags, err)
		}
	}
}

func TestRequestRoundTrip(t *testing.T) {
	req := Request{Flags: CmdFlagFUA, Type: CmdWrite, Cookie: 0xdeadbeefcafe, Offset: 1 << 33, Length: 4096}
	var b [RequestSize]byte
	PutRequest(&b, req)
	got, err := ReadRequest(bytes.NewReader(b[:]), new([RequestSize]byte))
	if err != nil || got != req {
		t.Fatalf("ReadRequest = %+v, %v", got, err)
	}
	b[0] = 0
	if _, err := DecodeRequest(&b); !errors.Is(err, ErrBadMagic) {
		t.Fatalf("bad magic: err = %v", err)
	}
	if _, err := ReadRequest(bytes.NewReader(nil), &b); err != io.EOF {
		t.Fatalf("empty stream: err = %v, want io.EOF", err)
	}
	if _, err := ReadRequest(bytes.NewReader(b[:10]), &b); err != io.ErrUnexpectedEOF {
		t.Fatalf("half header: err = %v, want io.ErrUnexpectedEOF", err)
	}
}

func TestExtRequestRoundTrip(t *testing.T) {
	req := Request{Flags: CmdFlagFastZero, Type: CmdWriteZeroes, Cookie: 7, Offset: 1 << 33, Length: 5 << 30}
	var b [ExtRequestSize]byte
	PutExtRequest(&b, req)
	got, err := ReadExtRequest(bytes.NewReader(b[:]), new([ExtRequestSize]byte))
	if err != nil || got != req {
		t.Fatalf("ReadExtRequest = %+v, %v", got, err)
	}
	var c [RequestSize]byte
	copy(c[:], b[:])
	if _, err := DecodeRequest(&c); !errors.Is(err, ErrBadMagic) {
		t.Fatalf("extended magic accepted as compact: %v", err)
	}
	effect, ids, err := DecodeBlockStatusPayload(AppendBlockStatusPayload(nil, 1<<40, []uint32{2, 1}))
	if err != nil || effect != 1<<40 || !reflect.DeepEqual(ids, []uint32{2, 1}) {
		t.Fatalf("block status payload = %d %v %v", effect, ids, err)
	}
	for _, bad := range [][]byte{nil, make([]byte, 7), make([]byte, 10)} {
		if _, _, err := DecodeBlockStatusPayload(bad); !errors.Is(err, ErrMalformed) {
			t.Fatalf("payload of %d bytes: %v", len(bad), err)
		}
	}
}

func TestReplies(t *testing.T) {
	for _, ext := range []bool{false, true} {
		t.Run(map[bool]string{false: "structured", true: "extended"}[ext], func(t *testing.T) { testReplies(t, ext) })
	}
}

func testReplies(t *testing.T, ext bool) {
	var buf bytes.Buffer
	var s [SimpleReplySize]byte
	PutSimpleReply(&s, EPERM, 1)
	buf.Write(s[:])
	h := func(cookie uint64, flags ReplyFlags) ChunkHeader {
		return ChunkHeader{Extended: ext, Cookie: cookie, Flags: flags, Offset: 4096}
	}
	var hb [MaxOffsetHoleSize]byte
	n := PutOffsetDataHeader(hb[:], h(2, 0), 4096, 3)
	buf.Write(hb[:n])
	buf.WriteString("abc")
	n = PutOffsetHole(hb[:], h(2, 0), 8192, 512)
	buf.Write(hb[:n])
	big := uint64(1)
	if ext {
		big = 5 << 30
	}
	buf.Write(AppendBlockStatus(nil, h(3, ReplyFlagDone), 1, []BlockDescriptor{{512, uint64(StateHole | StateZero)}, {1024 * big, 0}}))
	buf.Write(AppendError(nil, h(4, 0), EIO, "boom"))
	buf.Write(AppendErrorOffset(nil, h(4, ReplyFlagDone), EIO, "bad sector", 4608))
	n = PutNone(hb[:], h(5, 0))
	buf.Write(hb[:n])

	r := &buf
	rep, err := ReadReply(r, 1<<20)
	if err != nil || !rep.Simple || rep.Errno != EPERM || rep.Cookie != 1 {
		t.Fatalf("simple reply = %+v, %v", rep, err)
	}
	rep, _ = ReadReply(r, 1<<20)
	off, data, err := DecodeOffsetData(rep.Payload)
	if err != nil || rep.Chunk.Type != ReplyOffsetData || off != 4096 || string(data) != "abc" || rep.Chunk.Extended != ext {
		t.Fatalf("offset data = %+v %d %q %v", rep.Chunk, off, data, err)
	}
	if ext && rep.Chunk.Offset != 4096 {
		t.Fatalf("extended header offset %d", rep.Chunk.Offset)
	}
	rep, _ = ReadReply(r, 1<<20)
	hoff, hsize, err := DecodeOffsetHole(rep.Payload)
	if err != nil || hoff != 8192 || hsize != 512 {
		t.Fatalf("offset hole = %d %d %v", hoff, hsize, err)
	}
	rep, _ = ReadReply(r, 1<<20)
	decode, wantType := DecodeBlockStatus, ReplyBlockStatus
	if ext {
		decode, wantType = DecodeBlockStatusExt, ReplyBlockStatusExt
	}
	id, descs, err := decode(rep.Payload)
	if err != nil || id != 1 || rep.Chunk.Type != wantType || rep.Chunk.Flags != ReplyFlagDone || !reflect.DeepEqual(descs, []BlockDescriptor{{512, 3}, {1024 * big, 0}}) {
		t.Fatalf("block status = %d %v %v", id, descs, err)
	}
	rep, _ = ReadReply(r, 1<<20)
	ce, err := DecodeError(rep.Chunk.Type, rep.Payload)
	if err != nil || ce.Errno != EIO || ce.Message != "boom" || ce.HasOffset {
		t.Fatalf("error = %+v, %v", ce, err)
	}
	rep, _ = ReadReply(r, 1<<20)
	ce, err = DecodeError(rep.Chunk.Type, rep.Payload)
	if err != nil || ce.Offset != 4608 || !ce.HasOffset || ce.Message != "bad sector" {
		t.Fatalf("error offset = %+v, %v", ce, err)
	}
	rep, err = ReadReply(r, 1<<20)
	if err != nil || rep.Chunk.Type != ReplyNone || rep.Chunk.Flags != ReplyFlagDone || rep.Cookie != 5 {
		t.Fatalf("none = %+v, %v", rep, err)
	}
}

func TestErrorMessageClipped(t *testing.T) {
	long := strings.Repeat("é", MaxStringLen)
	b := AppendError(nil, ChunkHeader{Flags: ReplyFlagDone, Cookie: 1}, EIO, long)
	rep, err := ReadReply(bytes.NewReader(b), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	ce, err := DecodeError(rep.Chunk.Type, rep.Payload)
	if err != nil || len(ce.Message) > MaxStringLen {
		t.Fatalf("clipped message: %d bytes, %v", len(ce.Message), err)
	}
}

func TestCheckString(t *testing.T) {
	tests := []struct {
		name string
		s    string
		want error
	}{
		{"ok", "disk-1", nil},
		{"empty", "", nil},
		{"nul", "a\x00", ErrBadString},
		{"invalid utf8", "\xc3", ErrBadString},
		{"long", strings.Repeat("x", MaxStringLen+1), ErrTooLong},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := CheckString(tc.s); !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Fatalf("CheckString = %v, want %v", err, tc.want)
			}
		})
	}
}
