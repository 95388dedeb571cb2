package kernel

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The ioctl interface (linux/nbd.h): _IO(0xab, n).
const (
	ioctlSetSock    = 0xab00 // NBD_SET_SOCK
	ioctlSetBlksize = 0xab01 // NBD_SET_BLKSIZE
	ioctlSetSize    = 0xab02 // NBD_SET_SIZE
	ioctlDoIt       = 0xab03 // NBD_DO_IT
	ioctlClearSock  = 0xab04 // NBD_CLEAR_SOCK
	ioctlClearQue   = 0xab05 // NBD_CLEAR_QUE
	ioctlDisconnect = 0xab08 // NBD_DISCONNECT
	ioctlSetTimeout = 0xab09 // NBD_SET_TIMEOUT
	ioctlSetFlags   = 0xab0a // NBD_SET_FLAGS
)

// ioctlConn is a device configured through ioctls: a goroutine sits in
// NBD_DO_IT until the device is disconnected.
type ioctlConn struct {
	f    *os.File
	done chan struct{} // closed when NBD_DO_IT returned
	err  error         // NBD_DO_IT's result, set before done closes
}

// ioctlConns holds the devices this process configured through ioctls, so
// that Disconnect can wait for their NBD_DO_IT goroutines.
var ioctlConns = struct {
	mu sync.Mutex
	m  map[int]*ioctlConn
}{m: make(map[int]*ioctlConn)}

// connectIoctl configures a device with ioctls and starts NBD_DO_IT.
func connectIoctl(socks []*os.File, c Config) (int, error) {
	idx, f, err := openFree(c.Index)
	if err != nil {
		return -1, err
	}
	fd := int(f.Fd())
	steps := []struct {
		name    string
		req     uint
		arg     uintptr
		enabled bool
	}{
		{"NBD_SET_BLKSIZE", ioctlSetBlksize, uintptr(c.BlockSize), true},
		{"NBD_SET_SIZE", ioctlSetSize, uintptr(c.Size), true},
		{"NBD_SET_TIMEOUT", ioctlSetTimeout, uintptr(seconds(c.Timeout)), c.Timeout > 0},
		{"NBD_SET_FLAGS", ioctlSetFlags, uintptr(c.Flags | FlagHasFlags), true},
	}
	for _, s := range steps {
		if !s.enabled {
			continue
		}
		if err := unix.IoctlSetInt(fd, s.req, int(s.arg)); err != nil {
			f.Close()
			return -1, fmt.Errorf("nbd: %s on %s: %w", s.name, f.Name(), err)
		}
	}
	for i, s := range socks {
		if err := unix.IoctlSetInt(fd, ioctlSetSock, int(s.Fd())); err != nil {
			unix.IoctlSetInt(fd, ioctlClearSock, 0)
			f.Close()
			if errors.Is(err, unix.EBUSY) {
				err = fmt.Errorf("%w: %w", ErrBusy, err)
			}
			return -1, fmt.Errorf("nbd: NBD_SET_SOCK %d on %s: %w", i, f.Name(), err)
		}
	}
	ic := &ioctlConn{f: f, done: make(chan struct{})}
	ioctlConns.mu.Lock()
	ioctlConns.m[idx] = ic
	ioctlConns.mu.Unlock()
	go ic.doIt(idx) // owned through ioctlConns: Disconnect waits for it
	if err := waitStarted(idx, ic.done); err != nil {
		disconnectIoctl(idx)
		return -1, err
	}
	return idx, nil
}

// doIt runs NBD_DO_IT, which returns when the device is disconnected, then
// clears the device and forgets it.
//
// The kernel waits interruptibly in NBD_DO_IT and tears the device down if
// a signal arrives, so the call runs on a locked OS thread that blocks
// every signal (the process's signals go to other threads); the thread
// exits with the goroutine.
func (ic *ioctlConn) doIt(idx int) {
	runtime.LockOSThread()
	all := unix.Sigset_t{}
	for i := range all.Val {
		all.Val[i] = ^uint64(0)
	}
	_ = unix.PthreadSigmask(unix.SIG_BLOCK, &all, nil) // SIGKILL and SIGSTOP stay deliverable
	fd := int(ic.f.Fd())
	_, err := unix.IoctlRetInt(fd, ioctlDoIt)
	unix.IoctlSetInt(fd, ioctlClearQue, 0)
	unix.IoctlSetInt(fd, ioctlClearSock, 0)
	ic.f.Close()
	if err != nil && !errors.Is(err, unix.EPIPE) { // EPIPE: the server hung up
		ic.err = fmt.Errorf("nbd: NBD_DO_IT on %s: %w", Path(idx), err)
	}
	ioctlConns.mu.Lock()
	if ioctlConns.m[idx] == ic {
		delete(ioctlConns.m, idx)
	}
	ioctlConns.mu.Unlock()
	close(ic.done)
}

// waitStarted waits until the kernel shows the device running (its pid file
// appears), or NBD_DO_IT returned early.
func waitStarted(idx int, done <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(context.Background(), readyWait)
	defer cancel()
	pid := fmt.Sprintf("/sys/block/nbd%d/pid", idx)
	for {
		if _, err := os.Stat(pid); err == nil {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("nbd: %s stopped while starting", Path(idx))
		case <-ctx.Done():
			return fmt.Errorf("nbd: %s did not start within %v", Path(idx), readyWait)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// openFree opens /dev/nbd<index>, or with index -1 the first device that
// has no connection.
func openFree(index int) (int, *os.File, error) {
	if index >= 0 {
		f, err := openDev(index)
		return index, f, err
	}
	for i := 0; ; i++ {
		if _, err := os.Stat(Path(i)); err != nil {
			if i == 0 {
				return -1, nil, fmt.Errorf("%w: %s is missing (modprobe nbd)", ErrUnavailable, Path(0))
			}
			return -1, nil, fmt.Errorf("nbd: %w: all %d devices are in use", ErrBusy, i)
		}
		if inUse(i) {
			continue
		}
		f, err := openDev(i)
		if err != nil {
			return -1, nil, err
		}
		return i, f, nil
	}
}

func openDev(index int) (*os.File, error) {
	f, err := os.OpenFile(Path(index), os.O_RDWR, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s is missing (modprobe nbd)", ErrUnavailable, Path(index))
		}
		return nil, fmt.Errorf("nbd: %w", err)
	}
	return f, nil
}

// inUse reports whether device i has a size or a client process.
func inUse(i int) bool {
	if _, err := os.Stat(fmt.Sprintf("/sys/block/nbd%d/pid", i)); err == nil {
		return true
	}
	b, err := os.ReadFile(fmt.Sprintf("/sys/block/nbd%d/size", i))
	return err == nil && strings.TrimSpace(string(b)) != "0"
}

// disconnectIoctl sends NBD_DISCONNECT and, for a device this process
// configured, waits for NBD_DO_IT to return.
func disconnectIoctl(idx int) error {
	ioctlConns.mu.Lock()
	ic := ioctlConns.m[idx]
	ioctlConns.mu.Unlock()
	f, err := openDev(idx)
	if err != nil {
		return err
	}
	fd := int(f.Fd())
	// NBD_DISCONNECT sends NBD_CMD_DISC; NBD_CLEAR_SOCK shuts the sockets
	// down, so NBD_DO_IT returns without waiting for the server to hang up.
	err = unix.IoctlSetInt(fd, ioctlDisconnect, 0)
	if cerr := unix.IoctlSetInt(fd, ioctlClearSock, 0); err == nil && cerr != nil {
		err = cerr
	}
	f.Close()
	if err != nil {
		return fmt.Errorf("nbd: NBD_DISCONNECT on %s: %w", Path(idx), err)
	}
	if ic != nil {
		<-ic.done
		return ic.err
	}
	return nil
}
