package client

import "errors"

// ErrNoDaemon is returned (wrapped, with the socket path) when nothing
// answers on the socket.
var ErrNoDaemon = errors.New("no vdisk daemon is running")

// ErrDaemonStart is returned (wrapped, with the reason and the log file)
// when Ensure started a daemon that did not come up.
var ErrDaemonStart = errors.New("vdisk daemon did not start")
