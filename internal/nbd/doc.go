// Package nbd serves blockdev Devices over the Network Block Device
// protocol (doc/proto.md of the NetworkBlockDevice/nbd project), shaped like
// net/http: a Server holds the exports, Serve accepts connections on a
// listener, ServeConn speaks to one already-connected client (a socketpair
// for the kernel's nbd driver, a socket-activated fd), and Shutdown stops
// gracefully.
//
// The server speaks fixed newstyle negotiation only. Options: EXPORT_NAME,
// ABORT, LIST, INFO and GO (INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION,
// INFO_BLOCK_SIZE), STRUCTURED_REPLY, EXTENDED_HEADERS, LIST_META_CONTEXT
// and SET_META_CONTEXT with base:allocation and qemu:allocation-depth (the
// layer of a backing chain that holds each range: blockdev.Depther), and
// STARTTLS. Any other option gets NBD_REP_ERR_UNSUP and negotiation
// continues. With a TLSConfig the server runs in FORCEDTLS mode: before
// STARTTLS only STARTTLS and ABORT are served. Meta-context queries follow
// the spec in full (see options.go): LIST is answered in any state, SET
// needs structured replies or extended headers. A client still
// negotiating when the server shuts down has its next option answered
// NBD_REP_ERR_SHUTDOWN. The whole negotiation must end within
// HandshakeTimeout.
//
// In the transmission phase every command of the specification is served:
// READ (DF), WRITE (FUA), DISC, FLUSH, TRIM, CACHE, WRITE_ZEROES (NO_HOLE,
// FAST_ZERO) and BLOCK_STATUS (REQ_ONE), with simple replies, structured
// replies, or, when the client negotiated extended headers, 32-byte
// extended requests and replies only: 64-bit effect lengths for
// WRITE_ZEROES, TRIM, CACHE and BLOCK_STATUS, BLOCK_STATUS_EXT replies, and
// BLOCK_STATUS with a payload naming the contexts to answer for
// (NBD_FLAG_BLOCK_STATUS_PAYLOAD). The transmission
// flags tell the truth about the Device: SEND_TRIM only for a
// blockdev.Trimmer, SEND_FAST_ZERO only for a blockdev.ZeroWriter.
// CAN_MULTI_CONN is always set, because every connection to an export
// shares one Device whose Flush covers every completed write.
//
// Requests of one connection run concurrently, at most MaxInFlight at a
// time and at most maxInFlightBytes of payload buffers (and all
// connections together at most MaxBufferedBytes), and are answered
// out of order, each reply only after its operation finished. While the
// Device answers in microseconds (the page cache), the request reader runs
// small READs and WRITEs itself instead of paying for a goroutine handoff;
// one slow operation turns that off (see inline.go). Replies are written
// under a per-connection mutex; small ones are batched into one write per
// burst of requests, large ones go out with one writev of header and data.
// Buffers come from size-classed pools, so steady-state serving does not
// allocate.
//
// All connections to an export share its Device and call it concurrently;
// the Server never closes a Device, and Shutdown flushes each one.
package nbd
