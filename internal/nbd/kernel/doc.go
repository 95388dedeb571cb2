// Package kernel attaches the Linux kernel's NBD client to sockets whose
// other ends an NBD server serves, giving a /dev/nbdN.
//
// The kernel speaks only the transmission phase. As nbd-client does, the
// caller makes a socketpair per connection, serves one end with an NBD
// server (nbd.Server.ServeConn), runs the client side of the handshake on
// the other end with Handshake, and hands those ends to Connect with what
// the handshake said (size, block size, transmission flags). Connect configures the device through the generic netlink "nbd"
// family (NBD_CMD_CONNECT), and falls back to the ioctl interface
// (NBD_SET_SOCK, NBD_SET_SIZE, NBD_DO_IT) on kernels without it.
// Disconnect, Reconfigure (new sockets for a device whose connections died:
// a restarted daemon keeps its /dev/nbdN) and Status complete the set.
//
// Every function needs CAP_SYS_ADMIN and the nbd module. They may be
// called from any goroutine.
package kernel
