package wire

import (
	"fmt"
	"io"
)

// Request is a (compact) transmission request header. For CmdWrite, Length
// bytes of payload follow it on the wire.
type Request struct {
	Flags  CmdFlags
	Type   Cmd
	Cookie uint64 // the "handle" echoed in the reply
	Offset uint64
	Length uint32
}

// DecodeRequest decodes a request header from its RequestSize bytes.
func DecodeRequest(b *[RequestSize]byte) (Request, error) {
	if be.Uint32(b[0:]) != RequestMagic {
		return Request{}, fmt.Errorf("nbd: request: %w", ErrBadMagic)
	}
	return Request{
		Flags:  CmdFlags(be.Uint16(b[4:])),
		Type:   Cmd(be.Uint16(b[6:])),
		Cookie: be.Uint64(b[8:]),
		Offset: be.Uint64(b[16:]),
		Length: be.Uint32(b[24:]),
	}, nil
}

// ReadRequest reads one request header into buf and decodes it. It reads no
// payload. A stream that ends cleanly before the first byte returns io.EOF;
// one that ends inside the header returns io.ErrUnexpectedEOF.
func ReadRequest(r io.Reader, buf *[RequestSize]byte) (Request, error) {
	if _, err := io.ReadFull(r, buf[:]); err != nil {
		return Request{}, err
	}
	return DecodeRequest(buf)
}

// PutRequest encodes req into b.
func PutRequest(b *[RequestSize]byte, req Request) {
	be.PutUint32(b[0:], RequestMagic)
	be.PutUint16(b[4:], uint16(req.Flags))
	be.PutUint16(b[6:], uint16(req.Type))
	be.PutUint64(b[8:], req.Cookie)
	be.PutUint64(b[16:], req.Offset)
	be.PutUint32(b[24:], req.Length)
}

// PutSimpleReply encodes a simple reply header into b.
func PutSimpleReply(b *[SimpleReplySize]byte, errno Errno, cookie uint64) {
	be.PutUint32(b[0:], SimpleReplyMagic)
	be.PutUint32(b[4:], uint32(errno))
	be.PutUint64(b[8:], cookie)
}

// ChunkHeader is the header of a structured reply chunk; Length bytes of
// payload follow it.
type ChunkHeader struct {
	Flags  ReplyFlags
	Type   ReplyType
	Cookie uint64
	Length uint32
}

// PutChunkHeader encodes a structured reply chunk header into b, which must
// hold ChunkHeaderSize bytes.
func PutChunkHeader(b []byte, h ChunkHeader) {
	_ = b[ChunkHeaderSize-1]
	be.PutUint32(b[0:], StructuredReplyMagic)
	be.PutUint16(b[4:], uint16(h.Flags))
	be.PutUint16(b[6:], uint16(h.Type))
	be.PutUint64(b[8:], h.Cookie)
	be.PutUint32(b[16:], h.Length)
}

// PutOffsetDataHeader encodes the header of an OFFSET_DATA chunk carrying
// dataLen bytes at offset into b (OffsetDataHeaderSize bytes); the data
// follows on the wire.
func PutOffsetDataHeader(b *[OffsetDataHeaderSize]byte, flags ReplyFlags, cookie, offset uint64, dataLen uint32) {
	PutChunkHeader(b[:], ChunkHeader{Flags: flags, Type: ReplyOffsetData, Cookie: cookie, Length: 8 + dataLen})
	be.PutUint64(b[ChunkHeaderSize:], offset)
}

// PutOffsetHole encodes a whole OFFSET_HOLE chunk into b.
func PutOffsetHole(b *[OffsetHoleSize]byte, flags ReplyFlags, cookie, offset uint64, size uint32) {
	PutChunkHeader(b[:], ChunkHeader{Flags: flags, Type: ReplyOffsetHole, Cookie: cookie, Length: 12})
	be.PutUint64(b[ChunkHeaderSize:], offset)
	be.PutUint32(b[ChunkHeaderSize+8:], size)
}

// PutNone encodes a NONE chunk (always with ReplyFlagDone) into b.
func PutNone(b *[ChunkHeaderSize]byte, cookie uint64) {
	PutChunkHeader(b[:], ChunkHeader{Flags: ReplyFlagDone, Type: ReplyNone, Cookie: cookie})
}

// BlockDescriptor is one extent of an NBD_REPLY_TYPE_BLOCK_STATUS chunk.
type BlockDescriptor struct {
	Length uint32
	Flags  uint32
}

// AppendBlockStatus appends a whole BLOCK_STATUS chunk.
func AppendBlockStatus(b []byte, flags ReplyFlags, cookie uint64, contextID uint32, descs []BlockDescriptor) []byte {
	var h [ChunkHeaderSize]byte
	PutChunkHeader(h[:], ChunkHeader{Flags: flags, Type: ReplyBlockStatus, Cookie: cookie, Length: uint32(4 + 8*len(descs))})
	b = append(b, h[:]...)
	b = be.AppendUint32(b, contextID)
	for _, d := range descs {
		b = be.AppendUint32(b, d.Length)
		b = be.AppendUint32(b, d.Flags)
	}
	return b
}

// AppendError appends a whole ERROR chunk. A message longer than
// MaxStringLen is cut.
func AppendError(b []byte, flags ReplyFlags, cookie uint64, errno Errno, msg string) []byte {
	msg = clip(msg)
	var h [ChunkHeaderSize]byte
	PutChunkHeader(h[:], ChunkHeader{Flags: flags, Type: ReplyError, Cookie: cookie, Length: uint32(6 + len(msg))})
	b = append(b, h[:]...)
	b = be.AppendUint32(b, uint32(errno))
	b = be.AppendUint16(b, uint16(len(msg)))
	return append(b, msg...)
}

// AppendErrorOffset appends a whole ERROR_OFFSET chunk.
func AppendErrorOffset(b []byte, flags ReplyFlags, cookie uint64, errno Errno, msg string, offset uint64) []byte {
	msg = clip(msg)
	var h [ChunkHeaderSize]byte
	PutChunkHeader(h[:], ChunkHeader{Flags: flags, Type: ReplyErrorOffset, Cookie: cookie, Length: uint32(14 + len(msg))})
	b = append(b, h[:]...)
	b = be.AppendUint32(b, uint32(errno))
	b = be.AppendUint16(b, uint16(len(msg)))
	b = append(b, msg...)
	return be.AppendUint64(b, offset)
}

// clip cuts s to MaxStringLen bytes without splitting a UTF-8 sequence.
func clip(s string) string {
	if len(s) <= MaxStringLen {
		return s
	}
	i := MaxStringLen
	for i > 0 && s[i]&0xc0 == 0x80 {
		i--
	}
	return s[:i]
}

// Reply is one reply message read by a client: a simple reply (Simple set,
// Errno and Cookie) or one structured chunk (Chunk and Payload).
type Reply struct {
	Simple  bool
	Errno   Errno
	Cookie  uint64
	Chunk   ChunkHeader
	Payload []byte
}

// ReadReply reads one reply message (the client's side). A simple reply's
// data, if any, is not read: only the client knows whether it follows. A
// chunk payload larger than maxPayload+8 is refused with ErrTooLong.
func ReadReply(r io.Reader, maxPayload uint32) (Reply, error) {
	var b [ChunkHeaderSize]byte
	if _, err := io.ReadFull(r, b[:4]); err != nil {
		return Reply{}, err
	}
	switch be.Uint32(b[:]) {
	case SimpleReplyMagic:
		if _, err := io.ReadFull(r, b[4:SimpleReplySize]); err != nil {
			return Reply{}, fmt.Errorf("nbd: read simple reply: %w", err)
		}
		return Reply{Simple: true, Errno: Errno(be.Uint32(b[4:])), Cookie: be.Uint64(b[8:])}, nil
	case StructuredReplyMagic:
		if _, err := io.ReadFull(r, b[4:]); err != nil {
			return Reply{}, fmt.Errorf("nbd: read chunk header: %w", err)
		}
		h := ChunkHeader{
			Flags:  ReplyFlags(be.Uint16(b[4:])),
			Type:   ReplyType(be.Uint16(b[6:])),
			Cookie: be.Uint64(b[8:]),
			Length: be.Uint32(b[16:]),
		}
		if uint64(h.Length) > uint64(maxPayload)+8 {
			return Reply{}, fmt.Errorf("nbd: chunk of %d bytes: %w", h.Length, ErrTooLong)
		}
		p := make([]byte, h.Length)
		if _, err := io.ReadFull(r, p); err != nil {
			return Reply{}, fmt.Errorf("nbd: read chunk payload: %w", err)
		}
		return Reply{Cookie: h.Cookie, Chunk: h, Payload: p}, nil
	}
	return Reply{}, fmt.Errorf("nbd: reply: %w", ErrBadMagic)
}

// DecodeOffsetData splits an OFFSET_DATA payload into offset and data.
func DecodeOffsetData(p []byte) (offset uint64, data []byte, err error) {
	if len(p) < 9 {
		return 0, nil, fmt.Errorf("nbd: offset data chunk of %d bytes: %w", len(p), ErrMalformed)
	}
	return be.Uint64(p), p[8:], nil
}

// DecodeOffsetHole decodes an OFFSET_HOLE payload.
func DecodeOffsetHole(p []byte) (offset uint64, size uint32, err error) {
	if len(p) != 12 {
		return 0, 0, fmt.Errorf("nbd: offset hole chunk of %d bytes: %w", len(p), ErrMalformed)
	}
	size = be.Uint32(p[8:])
	if size == 0 {
		return 0, 0, fmt.Errorf("nbd: empty hole: %w", ErrMalformed)
	}
	return be.Uint64(p), size, nil
}

// DecodeBlockStatus decodes a BLOCK_STATUS payload.
func DecodeBlockStatus(p []byte) (contextID uint32, descs []BlockDescriptor, err error) {
	if len(p) < 12 || (len(p)-4)%8 != 0 || len(p) > MaxChunkPayload {
		return 0, nil, fmt.Errorf("nbd: block status chunk of %d bytes: %w", len(p), ErrMalformed)
	}
	contextID = be.Uint32(p)
	descs = make([]BlockDescriptor, (len(p)-4)/8)
	for i := range descs {
		descs[i] = BlockDescriptor{Length: be.Uint32(p[4+8*i:]), Flags: be.Uint32(p[8+8*i:])}
	}
	return contextID, descs, nil
}

// ChunkError is a decoded error chunk.
type ChunkError struct {
	Errno     Errno
	Message   string
	Offset    uint64
	HasOffset bool
}

// Error formats the chunk error.
func (e *ChunkError) Error() string {
	if e.HasOffset {
		return fmt.Sprintf("nbd: server error %d at offset %d: %s", e.Errno, e.Offset, e.Message)
	}
	return fmt.Sprintf("nbd: server error %d: %s", e.Errno, e.Message)
}

// DecodeError decodes the payload of an error chunk of type t (ERROR,
// ERROR_OFFSET, or any other type with bit 15 set, whose extra fields are
// skipped).
func DecodeError(t ReplyType, p []byte) (*ChunkError, error) {
	d := decoder{b: p}
	e := &ChunkError{Errno: Errno(d.u32())}
	e.Message = d.str(uint64(d.u16()))
	switch t {
	case ReplyError:
	case ReplyErrorOffset:
		e.Offset, e.HasOffset = d.u64(), true
	default:
		if !t.IsError() {
			return nil, fmt.Errorf("nbd: chunk type %d is not an error: %w", t, ErrMalformed)
		}
		d.b = nil
	}
	if err := d.end(); err != nil {
		return nil, fmt.Errorf("nbd: error chunk: %w", err)
	}
	if e.Errno == 0 {
		return nil, fmt.Errorf("nbd: error chunk with error 0: %w", ErrMalformed)
	}
	return e, nil
}
