package kernel

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"syscall"
)

// forceIoctl makes Connect skip netlink; tests set it to exercise the
// fallback on kernels that have both.
var forceIoctl = false

// Connect attaches the kernel's NBD client to socks (one per connection;
// several need FlagMultiConn) and returns the device index N of /dev/nbdN,
// ready for I/O. The server must already be serving the other ends in the
// transmission phase. The kernel takes its own reference to each socket:
// the caller may close socks once Connect returns.
//
// Netlink is used when the kernel has the nbd family; otherwise the ioctl
// interface, whose NBD_DO_IT runs in a goroutine until Disconnect.
func Connect(socks []*os.File, c Config) (int, error) {
	if err := c.Validate(socks); err != nil {
		return -1, err
	}
	if !forceIoctl {
		f, err := dialFamily()
		switch {
		case err == nil:
			defer f.close()
			return connectNetlink(f, socks, c)
		case !errors.Is(err, errNoFamily):
			return -1, err
		}
	}
	return connectIoctl(socks, c)
}

func connectNetlink(f *family, socks []*os.File, c Config) (int, error) {
	fds := make([]int, len(socks))
	for i, s := range socks {
		fds[i] = int(s.Fd())
	}
	attrs, err := connectAttrs(fds, c)
	if err != nil {
		return -1, fmt.Errorf("nbd: encode connect: %w", err)
	}
	msgs, err := f.execute(cmdConnect, attrs, false)
	runtime.KeepAlive(socks) // the fds must stay open until the kernel took them
	if err != nil {
		if errors.Is(err, syscall.EBUSY) {
			err = fmt.Errorf("%w: %w", ErrBusy, err)
		}
		return -1, fmt.Errorf("nbd: NBD_CMD_CONNECT: %w", err)
	}
	return parseIndex(msgs)
}

// Disconnect disconnects /dev/nbd<index>: the kernel fails new I/O, tells
// the server NBD_CMD_DISC and closes its sockets. For a device set up
// through ioctls by this process it also waits for NBD_DO_IT to return.
// The device's size drops to zero shortly after Disconnect returns.
func Disconnect(index int) error {
	if index < 0 {
		return fmt.Errorf("nbd: bad device index %d", index)
	}
	ioctlConns.mu.Lock()
	_, mine := ioctlConns.m[index]
	ioctlConns.mu.Unlock()
	if mine || forceIoctl {
		return disconnectIoctl(index)
	}
	f, err := dialFamily()
	if errors.Is(err, errNoFamily) {
		return disconnectIoctl(index)
	}
	if err != nil {
		return err
	}
	defer f.close()
	attrs, err := indexAttrs(index)
	if err != nil {
		return err
	}
	if _, err := f.execute(cmdDisconnect, attrs, true); err != nil {
		return fmt.Errorf("nbd: NBD_CMD_DISCONNECT %s: %w", Path(index), err)
	}
	return nil
}

// Reconfigure gives /dev/nbd<index> new sockets in place of dead ones (a
// server that restarted), through NBD_CMD_RECONFIGURE. backend must be the
// Config.Backend the device was connected with: the kernel refuses a
// mismatch, which keeps a restarted daemon from attaching the wrong image.
// Each socket replaces one connection the kernel has marked dead; ErrBusy
// means none was dead yet (the kernel notices a closed peer
// asynchronously: try again). Netlink only: the ioctl interface cannot
// reconnect.
func Reconfigure(index int, backend string, socks []*os.File) error {
	if index < 0 || len(socks) == 0 || len(socks) > MaxSockets {
		return fmt.Errorf("nbd: reconfigure %d with %d sockets", index, len(socks))
	}
	f, err := dialFamily()
	if errors.Is(err, errNoFamily) {
		return fmt.Errorf("nbd: reconfigure needs netlink: %w", ErrUnavailable)
	}
	if err != nil {
		return err
	}
	defer f.close()
	fds := make([]int, len(socks))
	for i, s := range socks {
		fds[i] = int(s.Fd())
	}
	attrs, err := reconfigureAttrs(index, backend, fds)
	if err != nil {
		return err
	}
	_, err = f.execute(cmdReconfigure, attrs, true)
	runtime.KeepAlive(socks)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, syscall.ENOSPC):
		return fmt.Errorf("nbd: NBD_CMD_RECONFIGURE %s: %w: no dead connection to replace", Path(index), ErrBusy)
	case errors.Is(err, syscall.EINVAL):
		return fmt.Errorf("nbd: NBD_CMD_RECONFIGURE %s: %w: %w", Path(index), ErrNotConnected, err)
	default:
		return fmt.Errorf("nbd: NBD_CMD_RECONFIGURE %s: %w", Path(index), err)
	}
}

// Status reports whether /dev/nbd<index> is connected (netlink only).
func Status(index int) (DeviceStatus, error) {
	if index < 0 {
		return DeviceStatus{}, fmt.Errorf("nbd: bad device index %d", index)
	}
	list, err := status(index)
	if err != nil {
		return DeviceStatus{}, err
	}
	for _, st := range list {
		if st.Index == index {
			return st, nil
		}
	}
	return DeviceStatus{}, fmt.Errorf("nbd: status of %s: not in the kernel's answer", Path(index))
}

// List reports every nbd device and whether it is connected (netlink only).
func List() ([]DeviceStatus, error) { return status(-1) }

func status(index int) ([]DeviceStatus, error) {
	f, err := dialFamily()
	if errors.Is(err, errNoFamily) {
		return nil, fmt.Errorf("nbd: status needs netlink: %w", ErrUnavailable)
	}
	if err != nil {
		return nil, err
	}
	defer f.close()
	attrs, err := indexAttrs(index)
	if err != nil {
		return nil, err
	}
	msgs, err := f.execute(cmdStatus, attrs, false)
	if err != nil {
		return nil, fmt.Errorf("nbd: NBD_CMD_STATUS: %w", err)
	}
	return parseStatus(msgs)
}

// Available reports whether the kernel has an NBD client: nil when the
// netlink family or /dev/nbd0 exists, else an error wrapping
// ErrUnavailable. viaNetlink tells which interface Connect will use.
func Available() (viaNetlink bool, err error) {
	f, err := dialFamily()
	if err == nil {
		f.close()
		return true, nil
	}
	if !errors.Is(err, errNoFamily) {
		return false, err
	}
	if _, err := os.Stat(Path(0)); err != nil {
		return false, fmt.Errorf("%w: no netlink family and no %s (modprobe nbd)", ErrUnavailable, Path(0))
	}
	return false, nil
}
