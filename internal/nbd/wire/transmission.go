package wire

import (
	"fmt"
	"io"
)

// Request is a transmission request header, compact or extended. For a
// compact CmdWrite, and for an extended request with CmdFlagPayloadLen,
// Length bytes of payload follow it on the wire; otherwise Length is the
// effect length (at most 32 bits in a compact request).
type Request struct {
	Flags  CmdFlags
	Type   Cmd
	Cookie uint64 // the "handle" echoed in the reply
	Offset uint64
	Length uint64
}

// DecodeRequest decodes a compact request header from its RequestSize bytes.
func DecodeRequest(b *[RequestSize]byte) (Request, error) {
	if be.Uint32(b[0:]) != RequestMagic {
		return Request{}, fmt.Errorf("nbd: request: %w", ErrBadMagic)
	}
	return Request{
		Flags:  CmdFlags(be.Uint16(b[4:])),
		Type:   Cmd(be.Uint16(b[6:])),
		Cookie: be.Uint64(b[8:]),
		Offset: be.Uint64(b[16:]),
		Length: uint64(be.Uint32(b[24:])),
	}, nil
}

// DecodeExtRequest decodes an extended request header from its
// ExtRequestSize bytes.
func DecodeExtRequest(b *[ExtRequestSize]byte) (Request, error) {
	if be.Uint32(b[0:]) != ExtendedRequestMagic {
		return Request{}, fmt.Errorf("nbd: extended request: %w", ErrBadMagic)
	}
	return Request{
		Flags:  CmdFlags(be.Uint16(b[4:])),
		Type:   Cmd(be.Uint16(b[6:])),
		Cookie: be.Uint64(b[8:]),
		Offset: be.Uint64(b[16:]),
		Length: be.Uint64(b[24:]),
	}, nil
}

// ReadRequest reads one compact request header into buf and decodes it. It
// reads no payload. A stream that ends cleanly before the first byte
// returns io.EOF; one that ends inside the header returns
// io.ErrUnexpectedEOF.
func ReadRequest(r io.Reader, buf *[RequestSize]byte) (Request, error) {
	if _, err := io.ReadFull(r, buf[:]); err != nil {
		return Request{}, err
	}
	return DecodeRequest(buf)
}

// ReadExtRequest is ReadRequest for an extended request header.
func ReadExtRequest(r io.Reader, buf *[ExtRequestSize]byte) (Request, error) {
	if _, err := io.ReadFull(r, buf[:]); err != nil {
		return Request{}, err
	}
	return DecodeExtRequest(buf)
}

// PutRequest encodes req as a compact request header into b; its Length
// must fit in 32 bits.
func PutRequest(b *[RequestSize]byte, req Request) {
	be.PutUint32(b[0:], RequestMagic)
	be.PutUint16(b[4:], uint16(req.Flags))
	be.PutUint16(b[6:], uint16(req.Type))
	be.PutUint64(b[8:], req.Cookie)
	be.PutUint64(b[16:], req.Offset)
	be.PutUint32(b[24:], uint32(req.Length))
}

// PutExtRequest encodes req as an extended request header into b.
func PutExtRequest(b *[ExtRequestSize]byte, req Request) {
	be.PutUint32(b[0:], ExtendedRequestMagic)
	be.PutUint16(b[4:], uint16(req.Flags))
	be.PutUint16(b[6:], uint16(req.Type))
	be.PutUint64(b[8:], req.Cookie)
	be.PutUint64(b[16:], req.Offset)
	be.PutUint64(b[24:], req.Length)
}

// PutSimpleReply encodes a simple reply header into b.
func PutSimpleReply(b *[SimpleReplySize]byte, errno Errno, cookie uint64) {
	be.PutUint32(b[0:], SimpleReplyMagic)
	be.PutUint32(b[4:], uint32(errno))
	be.PutUint64(b[8:], cookie)
}

// ChunkHeader is the header of a structured or (Extended) extended reply
// chunk; Length bytes of payload follow it. Offset, the offset of the
// request answered, is carried by extended headers only. The chunk
// builders below take a ChunkHeader as a template: they use its Extended,
// Flags, Cookie and Offset and set Type and Length themselves.
type ChunkHeader struct {
	Extended bool
	Flags    ReplyFlags
	Type     ReplyType
	Cookie   uint64
	Offset   uint64
	Length   uint32
}

// Size is the encoded size of the header: ChunkHeaderSize or
// ExtChunkHeaderSize.
func (h ChunkHeader) Size() int {
	if h.Extended {
		return ExtChunkHeaderSize
	}
	return ChunkHeaderSize
}

// PutChunkHeader encodes a chunk header into b, which must hold h.Size()
// bytes, and returns h.Size().
func PutChunkHeader(b []byte, h ChunkHeader) int {
	if h.Extended {
		_ = b[ExtChunkHeaderSize-1]
		be.PutUint32(b[0:], ExtendedReplyMagic)
		be.PutUint16(b[4:], uint16(h.Flags))
		be.PutUint16(b[6:], uint16(h.Type))
		be.PutUint64(b[8:], h.Cookie)
		be.PutUint64(b[16:], h.Offset)
		be.PutUint64(b[24:], uint64(h.Length))
		return ExtChunkHeaderSize
	}
	_ = b[ChunkHeaderSize-1]
	be.PutUint32(b[0:], StructuredReplyMagic)
	be.PutUint16(b[4:], uint16(h.Flags))
	be.PutUint16(b[6:], uint16(h.Type))
	be.PutUint64(b[8:], h.Cookie)
	be.PutUint32(b[16:], h.Length)
	return ChunkHeaderSize
}

// appendChunkHeader appends the header h with type t and payload length n.
func appendChunkHeader(b []byte, h ChunkHeader, t ReplyType, n int) []byte {
	h.Type, h.Length = t, uint32(n)
	var hb [ExtChunkHeaderSize]byte
	k := PutChunkHeader(hb[:], h)
	return append(b, hb[:k]...)
}

// PutOffsetDataHeader encodes into b the header of an OFFSET_DATA chunk
// carrying dataLen bytes at offset (h.Size()+8 bytes) and returns its
// size; the data follows on the wire.
func PutOffsetDataHeader(b []byte, h ChunkHeader, offset uint64, dataLen uint32) int {
	h.Type, h.Length = ReplyOffsetData, 8+dataLen
	n := PutChunkHeader(b, h)
	be.PutUint64(b[n:], offset)
	return n + 8
}

// PutOffsetHole encodes a whole OFFSET_HOLE chunk into b (h.Size()+12
// bytes) and returns its size.
func PutOffsetHole(b []byte, h ChunkHeader, offset uint64, size uint32) int {
	h.Type, h.Length = ReplyOffsetHole, 12
	n := PutChunkHeader(b, h)
	be.PutUint64(b[n:], offset)
	be.PutUint32(b[n+8:], size)
	return n + 12
}

// PutNone encodes a NONE chunk (always with ReplyFlagDone) into b and
// returns its size.
func PutNone(b []byte, h ChunkHeader) int {
	h.Type, h.Length, h.Flags = ReplyNone, 0, h.Flags|ReplyFlagDone
	return PutChunkHeader(b, h)
}

// BlockDescriptor is one extent of a block status chunk. In an
// NBD_REPLY_TYPE_BLOCK_STATUS chunk (compact) both fields are 32 bits.
type BlockDescriptor struct {
	Length uint64
	Flags  uint64
}

// AppendBlockStatus appends a whole block status chunk: BLOCK_STATUS_EXT
// (u32 context id, u32 count, 64-bit descriptors) with an extended header,
// BLOCK_STATUS (u32 context id, 32-bit descriptors) otherwise, where every
// field must fit in 32 bits.
func AppendBlockStatus(b []byte, h ChunkHeader, contextID uint32, descs []BlockDescriptor) []byte {
	if h.Extended {
		b = appendChunkHeader(b, h, ReplyBlockStatusExt, 8+16*len(descs))
		b = be.AppendUint32(b, contextID)
		b = be.AppendUint32(b, uint32(len(descs)))
		for _, d := range descs {
			b = be.AppendUint64(b, d.Length)
			b = be.AppendUint64(b, d.Flags)
		}
		return b
	}
	b = appendChunkHeader(b, h, ReplyBlockStatus, 4+8*len(descs))
	b = be.AppendUint32(b, contextID)
	for _, d := range descs {
		b = be.AppendUint32(b, uint32(d.Length))
		b = be.AppendUint32(b, uint32(d.Flags))
	}
	return b
}

// AppendError appends a whole ERROR chunk. A message longer than
// MaxStringLen is cut.
func AppendError(b []byte, h ChunkHeader, errno Errno, msg string) []byte {
	msg = clip(msg)
	b = appendChunkHeader(b, h, ReplyError, 6+len(msg))
	b = be.AppendUint32(b, uint32(errno))
	b = be.AppendUint16(b, uint16(len(msg)))
	return append(b, msg...)
}

// AppendErrorOffset appends a whole ERROR_OFFSET chunk.
func AppendErrorOffset(b []byte, h ChunkHeader, errno Errno, msg string, offset uint64) []byte {
	msg = clip(msg)
	b = appendChunkHeader(b, h, ReplyErrorOffset, 14+len(msg))
	b = be.AppendUint32(b, uint32(errno))
	b = be.AppendUint16(b, uint16(len(msg)))
	b = append(b, msg...)
	return be.AppendUint64(b, offset)
}

// AppendBlockStatusPayload appends the payload of an extended
// NBD_CMD_BLOCK_STATUS with CmdFlagPayloadLen: the effect length and the
// context ids to answer for.
func AppendBlockStatusPayload(b []byte, effect uint64, ids []uint32) []byte {
	b = be.AppendUint64(b, effect)
	for _, id := range ids {
		b = be.AppendUint32(b, id)
	}
	return b
}

// DecodeBlockStatusPayload decodes the payload of a BLOCK_STATUS request
// (8 + 4n bytes). At most MaxQueries ids are accepted: a server never has
// more contexts selected.
func DecodeBlockStatusPayload(p []byte) (effect uint64, ids []uint32, err error) {
	if len(p) < 8 || (len(p)-8)%4 != 0 {
		return 0, nil, fmt.Errorf("nbd: block status payload of %d bytes: %w", len(p), ErrMalformed)
	}
	n := (len(p) - 8) / 4
	if n > MaxQueries {
		return 0, nil, fmt.Errorf("nbd: block status payload with %d context ids: %w", n, ErrTooLong)
	}
	effect = be.Uint64(p)
	ids = make([]uint32, n)
	for i := range ids {
		ids[i] = be.Uint32(p[8+4*i:])
	}
	return effect, ids, nil
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
// Errno and Cookie) or one structured or extended chunk (Chunk and Payload).
type Reply struct {
	Simple  bool
	Errno   Errno
	Cookie  uint64
	Chunk   ChunkHeader
	Payload []byte
}

// ReadReply reads one reply message (the client's side): simple,
// structured or extended, whichever its magic says; the caller checks that
// it is the kind negotiated. A simple reply's data, if any, is not read:
// only the client knows whether it follows. A chunk payload larger than
// maxPayload+8 is refused with ErrTooLong.
func ReadReply(r io.Reader, maxPayload uint32) (Reply, error) {
	var b [ExtChunkHeaderSize]byte
	if _, err := io.ReadFull(r, b[:4]); err != nil {
		return Reply{}, err
	}
	var h ChunkHeader
	var length uint64
	switch be.Uint32(b[:]) {
	case SimpleReplyMagic:
		if _, err := io.ReadFull(r, b[4:SimpleReplySize]); err != nil {
			return Reply{}, fmt.Errorf("nbd: read simple reply: %w", err)
		}
		return Reply{Simple: true, Errno: Errno(be.Uint32(b[4:])), Cookie: be.Uint64(b[8:])}, nil
	case StructuredReplyMagic:
		if _, err := io.ReadFull(r, b[4:ChunkHeaderSize]); err != nil {
			return Reply{}, fmt.Errorf("nbd: read chunk header: %w", err)
		}
		length = uint64(be.Uint32(b[16:]))
	case ExtendedReplyMagic:
		if _, err := io.ReadFull(r, b[4:]); err != nil {
			return Reply{}, fmt.Errorf("nbd: read extended chunk header: %w", err)
		}
		h.Extended = true
		h.Offset = be.Uint64(b[16:])
		length = be.Uint64(b[24:])
	default:
		return Reply{}, fmt.Errorf("nbd: reply: %w", ErrBadMagic)
	}
	h.Flags = ReplyFlags(be.Uint16(b[4:]))
	h.Type = ReplyType(be.Uint16(b[6:]))
	h.Cookie = be.Uint64(b[8:])
	if length > uint64(maxPayload)+8 {
		return Reply{}, fmt.Errorf("nbd: chunk of %d bytes: %w", length, ErrTooLong)
	}
	h.Length = uint32(length)
	p := make([]byte, length)
	if _, err := io.ReadFull(r, p); err != nil {
		return Reply{}, fmt.Errorf("nbd: read chunk payload: %w", err)
	}
	return Reply{Cookie: h.Cookie, Chunk: h, Payload: p}, nil
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

// DecodeBlockStatus decodes a BLOCK_STATUS payload (32-bit descriptors).
func DecodeBlockStatus(p []byte) (contextID uint32, descs []BlockDescriptor, err error) {
	if len(p) < 12 || (len(p)-4)%8 != 0 || len(p) > MaxChunkPayload {
		return 0, nil, fmt.Errorf("nbd: block status chunk of %d bytes: %w", len(p), ErrMalformed)
	}
	contextID = be.Uint32(p)
	descs = make([]BlockDescriptor, (len(p)-4)/8)
	for i := range descs {
		descs[i] = BlockDescriptor{Length: uint64(be.Uint32(p[4+8*i:])), Flags: uint64(be.Uint32(p[8+8*i:]))}
	}
	return contextID, descs, nil
}

// DecodeBlockStatusExt decodes a BLOCK_STATUS_EXT payload (u32 context
// id, u32 descriptor count, 64-bit descriptors). The count must match the
// length and be nonzero.
func DecodeBlockStatusExt(p []byte) (contextID uint32, descs []BlockDescriptor, err error) {
	if len(p) < 24 || (len(p)-8)%16 != 0 || len(p) > MaxChunkPayload {
		return 0, nil, fmt.Errorf("nbd: extended block status chunk of %d bytes: %w", len(p), ErrMalformed)
	}
	contextID = be.Uint32(p)
	n := (len(p) - 8) / 16
	if c := be.Uint32(p[4:]); uint64(c) != uint64(n) {
		return 0, nil, fmt.Errorf("nbd: extended block status chunk counts %d descriptors in room for %d: %w", c, n, ErrMalformed)
	}
	descs = make([]BlockDescriptor, n)
	for i := range descs {
		descs[i] = BlockDescriptor{Length: be.Uint64(p[8+16*i:]), Flags: be.Uint64(p[16+16*i:])}
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
