package wire

import (
	"bytes"
	"os"
	"path/filepath"
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
	for _, ext := range []bool{false, true} {
		h := ChunkHeader{Extended: ext, Flags: ReplyFlagDone, Cookie: 1, Offset: 512}
		var hb [MaxOffsetHoleSize]byte
		f.Add(append([]byte(nil), hb[:PutOffsetHole(hb[:], h, 0, 4096)]...))
		f.Add(AppendBlockStatus(nil, h, 1, []BlockDescriptor{{4096, 3}}))
		f.Add(AppendError(nil, h, EINVAL, "bad"))
		f.Add(AppendErrorOffset(nil, h, EIO, "bad", 512))
		f.Add(append(append([]byte(nil), hb[:PutOffsetDataHeader(hb[:], h, 0, 1)]...), 'x'))
		f.Add(append([]byte(nil), hb[:PutNone(hb[:], h)]...))
	}
	// Extended reply chunks qemu-nbd 10 sent to qemu-io 10 (NONE,
	// OFFSET_DATA, OFFSET_HOLE, BLOCK_STATUS_EXT).
	names, _ := filepath.Glob("testdata/qemu-nbd10-reply-*.bin")
	if len(names) == 0 {
		f.Fatal("no recorded replies in testdata")
	}
	for _, name := range names {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		rep, err := ReadReply(bytes.NewReader(b), 1<<16)
		if err != nil || rep.Simple {
			return
		}
		p := rep.Payload
		h := rep.Chunk
		n := h.Size() + len(p)
		var enc []byte
		var hb [MaxOffsetHoleSize]byte
		switch h.Type {
		case ReplyOffsetData:
			if off, data, err := DecodeOffsetData(p); err == nil {
				enc = append(hb[:PutOffsetDataHeader(hb[:], h, off, uint32(len(data)))], data...)
			}
		case ReplyOffsetHole:
			if off, size, err := DecodeOffsetHole(p); err == nil {
				enc = hb[:PutOffsetHole(hb[:], h, off, size)]
			}
		case ReplyBlockStatus:
			if id, descs, err := DecodeBlockStatus(p); err == nil && !h.Extended {
				enc = AppendBlockStatus(nil, h, id, descs)
			}
		case ReplyBlockStatusExt:
			if id, descs, err := DecodeBlockStatusExt(p); err == nil {
				if len(descs) == 0 {
					t.Fatalf("accepted an empty extended block status")
				}
				if h.Extended {
					enc = AppendBlockStatus(nil, h, id, descs)
				}
			}
		case ReplyNone:
			if len(p) == 0 && h.Flags&ReplyFlagDone != 0 {
				enc = hb[:PutNone(hb[:], h)]
			}
		default:
			if h.Type.IsError() {
				if ce, err := DecodeError(h.Type, p); err == nil && ce.Errno == 0 {
					t.Fatalf("accepted error 0")
				}
			}
		}
		if enc != nil && !bytes.Equal(enc, b[:n]) {
			t.Fatalf("chunk type %d round trip differs:\n%x\n%x", h.Type, enc, b[:n])
		}
	})
}

func FuzzDecodeExtRequest(f *testing.F) {
	var b [ExtRequestSize]byte
	PutExtRequest(&b, Request{Type: CmdWriteZeroes, Cookie: 1, Offset: 512, Length: 5 << 30})
	f.Add(b[:])
	PutExtRequest(&b, Request{Type: CmdBlockStatus, Flags: CmdFlagPayloadLen, Cookie: 2, Length: 12})
	f.Add(append(b[:], AppendBlockStatusPayload(nil, 1<<33, []uint32{1})...))
	// The request headers qemu-io 10 sent to vdisk serve.
	names, _ := filepath.Glob("testdata/qemu10-request-*.bin")
	if len(names) == 0 {
		f.Fatal("no recorded requests in testdata")
	}
	for _, name := range names {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var hb [ExtRequestSize]byte
		r := bytes.NewReader(in)
		req, err := ReadExtRequest(r, &hb)
		if err != nil {
			return
		}
		var out [ExtRequestSize]byte
		PutExtRequest(&out, req)
		if !bytes.Equal(out[:], in[:ExtRequestSize]) {
			t.Fatalf("round trip differs")
		}
	})
}

func FuzzDecodeBlockStatusPayload(f *testing.F) {
	f.Add(AppendBlockStatusPayload(nil, 1<<33, []uint32{1, 2}))
	f.Add(AppendBlockStatusPayload(nil, 0, nil))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, p []byte) {
		effect, ids, err := DecodeBlockStatusPayload(p)
		if err != nil {
			return
		}
		if len(ids) > MaxQueries {
			t.Fatalf("accepted %d ids", len(ids))
		}
		if !bytes.Equal(AppendBlockStatusPayload(nil, effect, ids), p) {
			t.Fatalf("round trip differs")
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
