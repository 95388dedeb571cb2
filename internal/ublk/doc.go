// Package ublk serves a blockdev.Device to the Linux kernel as /dev/ublkbN
// through the ublk driver (ublk_drv, Linux 6.0 and later).
//
// Serve talks to /dev/ublk-control through an io_uring with 128-byte SQEs
// (the control command does not fit a normal SQE): GET_FEATURES, ADD_DEV,
// SET_PARAMS, START_DEV, and at Close STOP_DEV and DEL_DEV. Each hardware
// queue gets its own io_uring, on its own locked OS thread, and the mmap'd
// array of request descriptors; it issues one FETCH_REQ per tag and answers
// each request with COMMIT_AND_FETCH_REQ. Requests run on a pool of
// worker goroutines per queue; the queue thread alone touches the ring and
// commits their results, woken through an eventfd it polls. Data moves
// through one buffer per tag whose address the FETCH carries, which every
// ublk kernel supports; read, write (FUA as write+flush), flush, discard and
// write-zeroes map to the Device. Only features GET_FEATURES offers are
// used (today: the ioctl-encoded opcodes).
//
// The io_uring is internal/uring; its SQE and CQE, and the ublk
// structures, are checked against the installed UAPI headers by a test.
package ublk
