package nbd

import "errors"

// ErrServerClosed is returned by Serve and ServeConn after Shutdown.
var ErrServerClosed = errors.New("nbd: server closed")

// ErrNoExports is returned by Serve and ServeConn when the Server has no
// exports.
var ErrNoExports = errors.New("nbd: server has no exports")

// ErrBadExport is returned (wrapped with the reason) by Serve and ServeConn
// when an export is misconfigured: no Device, a duplicate or invalid name.
var ErrBadExport = errors.New("nbd: bad export")

// errProtocol marks a client's violation of the protocol: the connection
// is closed.
var errProtocol = errors.New("nbd: protocol violation")
