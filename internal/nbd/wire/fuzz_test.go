package wire

import (
	"bytes"
	"testing"
)

func FuzzReadOption(f *testing.F) {
	f.Add(AppendOption(nil, OptGo, AppendInfoRequest(nil, InfoRequest{Name: "d", Infos: []InfoType{InfoBlockSize}})))
	f.Add(AppendOption(nil, OptList, nil))
	f.Add([]byte("IHAVEOPT\x00\x00\x00\x07\xff\xff\xff\xff"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, data, err := ReadOption(bytes.NewReader(b))
		if err != nil {
			return
		}
		if h.Len > MaxOptionLen || int(h.Len) != len(data) {
			t.Fatalf("accepted %d bytes for length %d", len(data), h.Len)
		}
		if got := AppendOption(nil, h.Opt, data); !bytes.Equal(got, b[:len(got)]) {
			t.Fatalf("re-encoding differs")
		}
	})
}

func FuzzDecodeExportName(f *testing.F) {
	f.Add([]byte("disk"))
	f.Add([]byte{0xff, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		name, err := DecodeExportName(b)
		if err != nil {
			return
		}
		if name != string(b) || CheckString(name) != nil {
			t.Fatalf("accepted bad name %q", name)
		}
	})
}

func FuzzDecodeInfoRequest(f *testing.F) {
	f.Add(AppendInfoRequest(nil, InfoRequest{Name: "disk", Infos: []InfoType{InfoExport, InfoName, InfoDescription, InfoBlockSize}}))
	f.Add(AppendInfoRequest(nil, InfoRequest{}))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := DecodeInfoRequest(b)
		if err != nil {
			return
		}
		if got := AppendInfoRequest(nil, req); !bytes.Equal(got, b) {
			t.Fatalf("round trip differs: %x vs %x", got, b)
		}
	})
}

func FuzzDecodeMetaContextRequest(f *testing.F) {
	f.Add(AppendMetaContextRequest(nil, MetaContextRequest{Name: "disk", Queries: []string{"base:allocation"}}))
	f.Add(AppendMetaContextRequest(nil, MetaContextRequest{}))
	f.Add([]byte{0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := DecodeMetaContextRequest(b)
		if err != nil {
			return
		}
		if len(req.Queries) > MaxQueries {
			t.Fatalf("accepted %d queries", len(req.Queries))
		}
		if got := AppendMetaContextRequest(nil, req); !bytes.Equal(got, b) {
			t.Fatalf("round trip differs")
		}
	})
}

func FuzzDecodeRequest(f *testing.F) {
	var b [RequestSize]byte
	PutRequest(&b, Request{Type: CmdRead, Cookie: 1, Offset: 512, Length: 4096})
	f.Add(b[:])
	f.Add(make([]byte, RequestSize))
	f.Fuzz(func(t *testing.T, in []byte) {
		var hb [RequestSize]byte
		req, err := ReadRequest(bytes.NewReader(in), &hb)
		if err != nil {
			return
		}
		var out [RequestSize]byte
		PutRequest(&out, req)
		if !bytes.Equal(out[:], in[:RequestSize]) {
			t.Fatalf("round trip differs")
		}
	})
}

func FuzzReadOptionReply(f *testing.F) {
	f.Add(AppendOptionReply(nil, OptGo, RepInfo, AppendInfoExport(nil, 1<<20, FlagHasFlags)))
	f.Add(AppendOptionReply(nil, OptList, RepServer, AppendRepServer(nil, "a", "b")))
	f.Add(AppendOptionReply(nil, OptSetMetaContext, RepMetaContext, AppendMetaContext(nil, 1, MetaContextBaseAllocation)))
	f.Fuzz(func(t *testing.T, b []byte) {
		rep, err := ReadOptionReply(bytes.NewReader(b))
		if err != nil {
			return
		}
		if got := AppendOptionReply(nil, rep.Opt, rep.Type, rep.Data); !bytes.Equal(got, b[:len(got)]) {
			t.Fatalf("re-encoding differs")
		}
		switch rep.Type {
		case RepInfo:
			if in, err := DecodeInfo(rep.Data); err == nil {
				var enc []byte
				switch in.Type {
				case InfoExport:
					enc = AppendInfoExport(nil, in.Size, in.Flags)
				case InfoName:
					enc = AppendInfoName(nil, in.Name)
				case InfoDescription:
					enc = AppendInfoDescription(nil, in.Description)
				case InfoBlockSize:
					enc = AppendInfoBlockSize(nil, in.BlockSize)
				default:
					return
				}
				if !bytes.Equal(enc, rep.Data) {
					t.Fatalf("info round trip differs")
				}
			}
		case RepServer:
			if n, d, err := DecodeRepServer(rep.Data); err == nil && !bytes.Equal(AppendRepServer(nil, n, d), rep.Data) {
				t.Fatalf("server round trip differs")
			}
		case RepMetaContext:
			if id, n, err := DecodeMetaContext(rep.Data); err == nil && !bytes.Equal(AppendMetaContext(nil, id, n), rep.Data) {
				t.Fatalf("meta context round trip differs")
			}
		}
	})
}

func FuzzReadReply(f *testing.F) {
	var s [SimpleReplySize]byte
	PutSimpleReply(&s, EIO, 9)
	f.Add(s[:])
	var oh [OffsetHoleSize]byte
	PutOffsetHole(&oh, ReplyFlagDone, 1, 0, 4096)
	f.Add(oh[:])
	f.Add(AppendBlockStatus(nil, ReplyFlagDone, 1, 1, []BlockDescriptor{{4096, 3}}))
	f.Add(AppendError(nil, ReplyFlagDone, 1, EINVAL, "bad"))
	f.Add(AppendErrorOffset(nil, ReplyFlagDone, 1, EIO, "bad", 512))
	var od [OffsetDataHeaderSize]byte
	PutOffsetDataHeader(&od, ReplyFlagDone, 1, 0, 1)
	f.Add(append(od[:], 'x'))
	f.Fuzz(func(t *testing.T, b []byte) {
		rep, err := ReadReply(bytes.NewReader(b), 1<<16)
		if err != nil || rep.Simple {
			return
		}
		p := rep.Payload
		switch rep.Chunk.Type {
		case ReplyOffsetData:
			if off, data, err := DecodeOffsetData(p); err == nil {
				var h [OffsetDataHeaderSize]byte
				PutOffsetDataHeader(&h, rep.Chunk.Flags, rep.Cookie, off, uint32(len(data)))
				if !bytes.Equal(append(h[:], data...), b[:len(h)+len(data)]) {
					t.Fatalf("offset data round trip differs")
				}
			}
		case ReplyOffsetHole:
			if off, size, err := DecodeOffsetHole(p); err == nil {
				var h [OffsetHoleSize]byte
				PutOffsetHole(&h, rep.Chunk.Flags, rep.Cookie, off, size)
				if !bytes.Equal(h[:], b[:OffsetHoleSize]) {
					t.Fatalf("offset hole round trip differs")
				}
			}
		case ReplyBlockStatus:
			if id, descs, err := DecodeBlockStatus(p); err == nil {
				enc := AppendBlockStatus(nil, rep.Chunk.Flags, rep.Cookie, id, descs)
				if !bytes.Equal(enc, b[:len(enc)]) {
					t.Fatalf("block status round trip differs")
				}
			}
		default:
			if rep.Chunk.Type.IsError() {
				if ce, err := DecodeError(rep.Chunk.Type, p); err == nil && ce.Errno == 0 {
					t.Fatalf("accepted error 0")
				}
			}
		}
	})
}

func FuzzReadGreeting(f *testing.F) {
	f.Add(AppendGreeting(nil, FlagFixedNewstyle))
	f.Fuzz(func(t *testing.T, b []byte) {
		fl, err := ReadGreeting(bytes.NewReader(b))
		if err == nil && !bytes.Equal(AppendGreeting(nil, fl), b[:GreetingSize]) {
			t.Fatalf("round trip differs")
		}
	})
}
