// Package wire encodes and decodes the messages of the NBD protocol (the
// fixed newstyle handshake, option haggling and the transmission phase) as
// defined by doc/proto.md of the NetworkBlockDevice/nbd project.
//
// The package is pure: it reads from an io.Reader, writes to an io.Writer or
// appends to a byte slice, and starts no goroutines. Every decoder bounds
// what it accepts (option data at most MaxOptionLen bytes, strings at most
// MaxStringLen bytes of UTF-8 without NUL), so untrusted input can never make
// it allocate without bound. Constants carry Go-style names; the comment on
// each gives the name the specification uses.
package wire

// Magic numbers.
const (
	// Magic is NBDMAGIC (INIT_PASSWD), the first 8 bytes the server sends.
	Magic uint64 = 0x4e42444d41474943
	// OptMagic is IHAVEOPT: the newstyle magic and the magic of every option request.
	OptMagic uint64 = 0x49484156454F5054
	// RepMagic is the magic of every option reply (NBD_REP_MAGIC).
	RepMagic uint64 = 0x3e889045565a9
	// RequestMagic is NBD_REQUEST_MAGIC.
	RequestMagic uint32 = 0x25609513
	// SimpleReplyMagic is NBD_SIMPLE_REPLY_MAGIC.
	SimpleReplyMagic uint32 = 0x67446698
	// StructuredReplyMagic is NBD_STRUCTURED_REPLY_MAGIC.
	StructuredReplyMagic uint32 = 0x668e33ef
	// ExtendedRequestMagic is NBD_EXTENDED_REQUEST_MAGIC (extended headers).
	ExtendedRequestMagic uint32 = 0x21e41c71
	// ExtendedReplyMagic is NBD_EXTENDED_REPLY_MAGIC (extended headers).
	ExtendedReplyMagic uint32 = 0x6e8a278c
)

// Bounds on what the decoders accept.
const (
	// MaxStringLen is the longest string (export name, description,
	// query, error message) the protocol allows.
	MaxStringLen = 4096
	// MaxOptionLen is the longest option data the server reads; longer
	// options are refused without being read into memory.
	MaxOptionLen = 64 << 10
	// MaxOptionReplyLen is the longest option reply data a client reads.
	MaxOptionReplyLen = 64 << 10
	// MaxInfoRequests is the most information requests one NBD_OPT_INFO or
	// NBD_OPT_GO may carry (the count is a u16).
	MaxInfoRequests = 1<<16 - 1
	// MaxQueries is the most meta context queries accepted in one option.
	MaxQueries = 128
	// MaxChunkPayload bounds the payload of a structured reply chunk other
	// than OFFSET_DATA that a client decodes.
	MaxChunkPayload = 1 << 20
)

// Fixed sizes of wire messages.
const (
	// RequestSize is the size of a compact request header.
	RequestSize = 28
	// ExtRequestSize is the size of an extended request header.
	ExtRequestSize = 32
	// SimpleReplySize is the size of a simple reply header.
	SimpleReplySize = 16
	// ChunkHeaderSize is the size of a structured reply chunk header.
	ChunkHeaderSize = 20
	// ExtChunkHeaderSize is the size of an extended reply chunk header.
	ExtChunkHeaderSize = 32
	// MaxOffsetDataHeaderSize is the most that precedes the data of an
	// NBD_REPLY_TYPE_OFFSET_DATA chunk: an extended header and the offset.
	MaxOffsetDataHeaderSize = ExtChunkHeaderSize + 8
	// MaxOffsetHoleSize is the largest NBD_REPLY_TYPE_OFFSET_HOLE chunk
	// (with an extended header).
	MaxOffsetHoleSize = ExtChunkHeaderSize + 12
	// GreetingSize is NBDMAGIC, IHAVEOPT and the handshake flags.
	GreetingSize = 18
	// ExportNameReplyZeroes is the reserved zero padding after the reply
	// to NBD_OPT_EXPORT_NAME unless NO_ZEROES was negotiated.
	ExportNameReplyZeroes = 124
)

// HandshakeFlags are the 16 flags the server sends in its greeting.
type HandshakeFlags uint16

const (
	// FlagFixedNewstyle is NBD_FLAG_FIXED_NEWSTYLE.
	FlagFixedNewstyle HandshakeFlags = 1 << 0
	// FlagNoZeroes is NBD_FLAG_NO_ZEROES.
	FlagNoZeroes HandshakeFlags = 1 << 1
)

// ClientFlags are the 32 flags the client answers the greeting with.
type ClientFlags uint32

const (
	// ClientFixedNewstyle is NBD_FLAG_C_FIXED_NEWSTYLE.
	ClientFixedNewstyle ClientFlags = 1 << 0
	// ClientNoZeroes is NBD_FLAG_C_NO_ZEROES.
	ClientNoZeroes ClientFlags = 1 << 1
)

// TransmissionFlags describe an export (NBD_FLAG_*).
type TransmissionFlags uint16

const (
	// FlagHasFlags is NBD_FLAG_HAS_FLAGS; always set.
	FlagHasFlags TransmissionFlags = 1 << 0
	// FlagReadOnly is NBD_FLAG_READ_ONLY.
	FlagReadOnly TransmissionFlags = 1 << 1
	// FlagSendFlush is NBD_FLAG_SEND_FLUSH.
	FlagSendFlush TransmissionFlags = 1 << 2
	// FlagSendFUA is NBD_FLAG_SEND_FUA.
	FlagSendFUA TransmissionFlags = 1 << 3
	// FlagRotational is NBD_FLAG_ROTATIONAL.
	FlagRotational TransmissionFlags = 1 << 4
	// FlagSendTrim is NBD_FLAG_SEND_TRIM.
	FlagSendTrim TransmissionFlags = 1 << 5
	// FlagSendWriteZeroes is NBD_FLAG_SEND_WRITE_ZEROES.
	FlagSendWriteZeroes TransmissionFlags = 1 << 6
	// FlagSendDF is NBD_FLAG_SEND_DF.
	FlagSendDF TransmissionFlags = 1 << 7
	// FlagCanMultiConn is NBD_FLAG_CAN_MULTI_CONN.
	FlagCanMultiConn TransmissionFlags = 1 << 8
	// FlagSendResize is NBD_FLAG_SEND_RESIZE (resize extension).
	FlagSendResize TransmissionFlags = 1 << 9
	// FlagSendCache is NBD_FLAG_SEND_CACHE.
	FlagSendCache TransmissionFlags = 1 << 10
	// FlagSendFastZero is NBD_FLAG_SEND_FAST_ZERO.
	FlagSendFastZero TransmissionFlags = 1 << 11
	// FlagBlockStatusPayload is NBD_FLAG_BLOCK_STATUS_PAYLOAD (extended
	// headers): BLOCK_STATUS may carry a payload naming the context ids.
	FlagBlockStatusPayload TransmissionFlags = 1 << 12
)

// Opt is an option code (NBD_OPT_*).
type Opt uint32

const (
	// OptExportName is NBD_OPT_EXPORT_NAME.
	OptExportName Opt = 1
	// OptAbort is NBD_OPT_ABORT.
	OptAbort Opt = 2
	// OptList is NBD_OPT_LIST.
	OptList Opt = 3
	// OptPeekExport is NBD_OPT_PEEK_EXPORT (withdrawn).
	OptPeekExport Opt = 4
	// OptStartTLS is NBD_OPT_STARTTLS.
	OptStartTLS Opt = 5
	// OptInfo is NBD_OPT_INFO.
	OptInfo Opt = 6
	// OptGo is NBD_OPT_GO.
	OptGo Opt = 7
	// OptStructuredReply is NBD_OPT_STRUCTURED_REPLY.
	OptStructuredReply Opt = 8
	// OptListMetaContext is NBD_OPT_LIST_META_CONTEXT.
	OptListMetaContext Opt = 9
	// OptSetMetaContext is NBD_OPT_SET_META_CONTEXT.
	OptSetMetaContext Opt = 10
	// OptExtendedHeaders is NBD_OPT_EXTENDED_HEADERS (extension).
	OptExtendedHeaders Opt = 11
)

// Rep is an option reply type (NBD_REP_*). Error replies have bit 31 set.
type Rep uint32

const (
	// RepAck is NBD_REP_ACK.
	RepAck Rep = 1
	// RepServer is NBD_REP_SERVER.
	RepServer Rep = 2
	// RepInfo is NBD_REP_INFO.
	RepInfo Rep = 3
	// RepMetaContext is NBD_REP_META_CONTEXT.
	RepMetaContext Rep = 4

	repErr Rep = 1 << 31
	// RepErrUnsup is NBD_REP_ERR_UNSUP.
	RepErrUnsup = repErr + 1
	// RepErrPolicy is NBD_REP_ERR_POLICY.
	RepErrPolicy = repErr + 2
	// RepErrInvalid is NBD_REP_ERR_INVALID.
	RepErrInvalid = repErr + 3
	// RepErrPlatform is NBD_REP_ERR_PLATFORM.
	RepErrPlatform = repErr + 4
	// RepErrTLSReqd is NBD_REP_ERR_TLS_REQD.
	RepErrTLSReqd = repErr + 5
	// RepErrUnknown is NBD_REP_ERR_UNKNOWN.
	RepErrUnknown = repErr + 6
	// RepErrShutdown is NBD_REP_ERR_SHUTDOWN.
	RepErrShutdown = repErr + 7
	// RepErrBlockSizeReqd is NBD_REP_ERR_BLOCK_SIZE_REQD.
	RepErrBlockSizeReqd = repErr + 8
	// RepErrTooBig is NBD_REP_ERR_TOO_BIG.
	RepErrTooBig = repErr + 9
	// RepErrExtHeaderReqd is NBD_REP_ERR_EXT_HEADER_REQD.
	RepErrExtHeaderReqd = repErr + 10
)

// IsError reports whether r is an error reply.
func (r Rep) IsError() bool { return r&repErr != 0 }

// InfoType is an information type of NBD_OPT_INFO/GO (NBD_INFO_*).
type InfoType uint16

const (
	// InfoExport is NBD_INFO_EXPORT: size and transmission flags.
	InfoExport InfoType = 0
	// InfoName is NBD_INFO_NAME.
	InfoName InfoType = 1
	// InfoDescription is NBD_INFO_DESCRIPTION.
	InfoDescription InfoType = 2
	// InfoBlockSize is NBD_INFO_BLOCK_SIZE.
	InfoBlockSize InfoType = 3
)

// Cmd is a request type (NBD_CMD_*).
type Cmd uint16

const (
	// CmdRead is NBD_CMD_READ.
	CmdRead Cmd = 0
	// CmdWrite is NBD_CMD_WRITE.
	CmdWrite Cmd = 1
	// CmdDisc is NBD_CMD_DISC.
	CmdDisc Cmd = 2
	// CmdFlush is NBD_CMD_FLUSH.
	CmdFlush Cmd = 3
	// CmdTrim is NBD_CMD_TRIM.
	CmdTrim Cmd = 4
	// CmdCache is NBD_CMD_CACHE.
	CmdCache Cmd = 5
	// CmdWriteZeroes is NBD_CMD_WRITE_ZEROES.
	CmdWriteZeroes Cmd = 6
	// CmdBlockStatus is NBD_CMD_BLOCK_STATUS.
	CmdBlockStatus Cmd = 7
	// CmdResize is NBD_CMD_RESIZE (resize extension).
	CmdResize Cmd = 8
)

// CmdFlags are request flags (NBD_CMD_FLAG_*).
type CmdFlags uint16

const (
	// CmdFlagFUA is NBD_CMD_FLAG_FUA.
	CmdFlagFUA CmdFlags = 1 << 0
	// CmdFlagNoHole is NBD_CMD_FLAG_NO_HOLE.
	CmdFlagNoHole CmdFlags = 1 << 1
	// CmdFlagDF is NBD_CMD_FLAG_DF.
	CmdFlagDF CmdFlags = 1 << 2
	// CmdFlagReqOne is NBD_CMD_FLAG_REQ_ONE.
	CmdFlagReqOne CmdFlags = 1 << 3
	// CmdFlagFastZero is NBD_CMD_FLAG_FAST_ZERO.
	CmdFlagFastZero CmdFlags = 1 << 4
	// CmdFlagPayloadLen is NBD_CMD_FLAG_PAYLOAD_LEN (extended headers):
	// the length is that of a payload following the header.
	CmdFlagPayloadLen CmdFlags = 1 << 5
)

// ReplyFlags are structured reply chunk flags.
type ReplyFlags uint16

// ReplyFlagDone is NBD_REPLY_FLAG_DONE: the last chunk of a reply.
const ReplyFlagDone ReplyFlags = 1 << 0

// ReplyType is a structured reply chunk type (NBD_REPLY_TYPE_*).
type ReplyType uint16

const (
	// ReplyNone is NBD_REPLY_TYPE_NONE.
	ReplyNone ReplyType = 0
	// ReplyOffsetData is NBD_REPLY_TYPE_OFFSET_DATA.
	ReplyOffsetData ReplyType = 1
	// ReplyOffsetHole is NBD_REPLY_TYPE_OFFSET_HOLE.
	ReplyOffsetHole ReplyType = 2
	// ReplyBlockStatus is NBD_REPLY_TYPE_BLOCK_STATUS.
	ReplyBlockStatus ReplyType = 5
	// ReplyBlockStatusExt is NBD_REPLY_TYPE_BLOCK_STATUS_EXT (extended headers).
	ReplyBlockStatusExt ReplyType = 6
	// ReplyError is NBD_REPLY_TYPE_ERROR.
	ReplyError ReplyType = 1<<15 + 1
	// ReplyErrorOffset is NBD_REPLY_TYPE_ERROR_OFFSET.
	ReplyErrorOffset ReplyType = 1<<15 + 2
)

// IsError reports whether t is an error chunk type (bit 15 set).
func (t ReplyType) IsError() bool { return t&(1<<15) != 0 }

// Errno is an error value of the transmission phase.
type Errno uint32

const (
	// EPERM is "operation not permitted".
	EPERM Errno = 1
	// EIO is "input/output error".
	EIO Errno = 5
	// ENOMEM is "cannot allocate memory".
	ENOMEM Errno = 12
	// EINVAL is "invalid argument".
	EINVAL Errno = 22
	// ENOSPC is "no space left on device".
	ENOSPC Errno = 28
	// EOVERFLOW is "value too large".
	EOVERFLOW Errno = 75
	// ENOTSUP is "operation not supported".
	ENOTSUP Errno = 95
	// ESHUTDOWN is "server is in the process of being shut down".
	ESHUTDOWN Errno = 108
)

// Block status flags of the base:allocation context (NBD_STATE_*).
const (
	// StateHole is NBD_STATE_HOLE.
	StateHole uint32 = 1 << 0
	// StateZero is NBD_STATE_ZERO.
	StateZero uint32 = 1 << 1
)

// MetaContextBaseAllocation is the name of the one context the
// specification defines.
const MetaContextBaseAllocation = "base:allocation"

// MetaContextAllocationDepth is qemu's context (in the registered qemu
// namespace) whose descriptors hold, instead of flags, the depth in the
// backing chain of the layer that holds each range (0: none).
const MetaContextAllocationDepth = "qemu:allocation-depth"
