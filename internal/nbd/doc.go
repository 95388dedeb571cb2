// Package nbd serves blockdev Devices over the Network Block Device
// protocol (doc/proto.md of the NetworkBlockDevice/nbd project), shaped like
// net/http: a Server holds the exports, Serve accepts connections on a
// listener, ServeConn speaks to one already-connected client (a socketpair
// for the kernel's nbd driver, a socket-activated fd), and Shutdown stops
// gracefully.
//
// The server speaks fixed newstyle negotiation only. Options: EXPORT_NAME,
// ABORT, LIST, INFO and GO (INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION,
// INFO_BLOCK_SIZE), STRUCTURED_REPLY, LIST_META_CONTEXT and SET_META_CONTEXT
// with base:allocation and qemu:allocation-depth (the layer of a backing
// chain that holds each range: blockdev.Depther), and STARTTLS. Any other
// option gets
// NBD_REP_ERR_UNSUP and negotiation continues. With a TLSConfig the server
// runs in FORCEDTLS mode: before STARTTLS only STARTTLS and ABORT are served.
//
// In the transmission phase every command of the specification is served:
// READ (DF), WRITE (FUA), DISC, FLUSH, TRIM, CACHE, WRITE_ZEROES (NO_HOLE,
// FAST_ZERO) and BLOCK_STATUS (REQ_ONE), with structured replies when the
// client negotiated them and simple replies otherwise. The transmission
// flags tell the truth about the Device: SEND_TRIM only for a
// blockdev.Trimmer, SEND_FAST_ZERO only for a blockdev.ZeroWriter.
// CAN_MULTI_CONN is always set, because every connection to an export
// shares one Device whose Flush covers every completed write.
//
// Requests of one connection run concurrently, at most MaxInFlight at a
// time and at most maxInFlightBytes of payload buffers, and are answered
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
