package kernel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"vdisk/internal/nbd"
)

// Bounds of Attach and Close.
const (
	handshakeTimeout = 30 * time.Second // the handshake on each socketpair
	closeWait        = 30 * time.Second // the server's connections to end after a disconnect
)

// AttachOptions say how Attach gives an export to the kernel.
type AttachOptions struct {
	// Export is the name of the export of the Server to attach.
	Export string
	// Connections is the number of sockets (1 when zero); more than one
	// needs a server that allows multi-conn. At most MaxSockets.
	Connections int
	// Index is N of /dev/nbdN, or -1 to let the kernel choose. With
	// Reattach it must name the device.
	Index int
	// Timeout and DeadConnTimeout are as in Config.
	Timeout, DeadConnTimeout time.Duration
	// Backend names the backing store (see Config.Backend); Reattach must
	// give the same name.
	Backend string
	// Reattach takes over /dev/nbd<Index>, whose server died, with
	// Reconfigure instead of connecting a new device: the daemon restart
	// case. It needs netlink and a DeadConnTimeout when the device was
	// connected.
	Reattach bool
}

// Attachment is an export of an nbd.Server served to the kernel's NBD
// client over socketpairs: a /dev/nbdN. Close may be called from any
// goroutine, once.
type Attachment struct {
	index int

	cancel context.CancelFunc // ends the server's connections
	wg     sync.WaitGroup     // one per ServeConn goroutine

	mu    sync.Mutex
	conns []net.Conn
}

// Attach serves opt.Export of srv to the kernel: it makes the socketpairs,
// serves one end of each with srv.ServeConn, does the client handshake on
// the other (Handshake), and hands those ends to Connect (or Reconfigure)
// with the size, block size and transmission flags the server announced.
// ctx bounds the setup.
func Attach(ctx context.Context, srv *nbd.Server, opt AttachOptions) (*Attachment, error) {
	n := max(opt.Connections, 1)
	if n > MaxSockets {
		return nil, fmt.Errorf("nbd: %d connections, at most %d", n, MaxSockets)
	}
	life, cancel := context.WithCancel(context.Background())
	a := &Attachment{index: -1, cancel: cancel}
	kern, ex, err := a.open(ctx, life, srv, opt.Export, n)
	defer closeAll(kern)
	if err != nil {
		a.stop()
		return nil, err
	}
	if opt.Reattach {
		err = reconfigureRetry(ctx, opt.Index, opt.Backend, kern)
		a.index = opt.Index
	} else {
		a.index, err = Connect(kern, Config{
			Index: opt.Index, Size: ex.Size, BlockSize: ex.BlockSize(os.Getpagesize()), Flags: ex.Flags,
			Timeout: opt.Timeout, DeadConnTimeout: opt.DeadConnTimeout, Backend: opt.Backend,
		})
	}
	if err != nil {
		a.stop()
		return nil, err
	}
	return a, nil
}

// open makes n socketpairs, serves one end of each with srv and handshakes
// on the other, which it returns.
func (a *Attachment) open(ctx, life context.Context, srv *nbd.Server, export string, n int) ([]*os.File, Export, error) {
	var kern []*os.File
	var ex Export
	for i := range n {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return kern, ex, fmt.Errorf("nbd: socketpair: %w", err)
		}
		k := os.NewFile(uintptr(fds[0]), fmt.Sprintf("nbd-kernel-%d", i))
		kern = append(kern, k)
		sf := os.NewFile(uintptr(fds[1]), fmt.Sprintf("nbd-server-%d", i))
		c, err := net.FileConn(sf)
		sf.Close()
		if err != nil {
			return kern, ex, fmt.Errorf("nbd: server end: %w", err)
		}
		a.mu.Lock()
		a.conns = append(a.conns, c)
		a.mu.Unlock()
		a.wg.Go(func() { srv.ServeConn(life, c) })
		deadline := time.Now().Add(handshakeTimeout)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		k.SetDeadline(deadline) // ignored if the fd is not pollable: the server bounds it too
		e, err := Handshake(k, export)
		if err != nil {
			return kern, ex, err
		}
		if i > 0 && e.Flags&FlagMultiConn == 0 {
			return kern, ex, fmt.Errorf("nbd: export %q does not allow %d connections", export, n)
		}
		ex = e
	}
	return kern, ex, nil
}

// reconfigureRetry calls Reconfigure until the kernel has marked the old
// connections dead (ErrBusy until then), bounded by ctx and a minute.
func reconfigureRetry(ctx context.Context, index int, backend string, socks []*os.File) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		err := Reconfigure(index, backend, socks)
		if !errors.Is(err, ErrBusy) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func closeAll(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

// Index is N of /dev/nbdN.
func (a *Attachment) Index() int { return a.index }

// Path is /dev/nbdN.
func (a *Attachment) Path() string { return Path(a.index) }

// Close disconnects the device (the kernel sends NBD_CMD_DISC; the server
// has answered every earlier request, flushes included) and waits for the
// server's connections to end. It does not shut the Server down.
func (a *Attachment) Close() error {
	err := Disconnect(a.index)
	// The kernel shuts its ends down: the connections end by themselves.
	done := make(chan struct{})
	go func() { a.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(closeWait):
	}
	a.stop()
	return err
}

// stop ends the server's side of the connections and waits for them.
func (a *Attachment) stop() {
	a.cancel()
	a.mu.Lock()
	for _, c := range a.conns {
		c.Close()
	}
	a.mu.Unlock()
	a.wg.Wait()
}
