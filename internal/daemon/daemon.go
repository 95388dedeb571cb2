// Package daemon is the vdisk daemon: one per host, run as root, it owns
// every open disk. It serves the control API (package api) as HTTP+JSON on
// a unix socket of mode 0600, keeps a registry of open disks keyed by id,
// and is the only place where layers are wired together: an image is opened
// as a Device stack (stack.go) and reaches the kernel through ublk
// (/dev/ublkbN) or the kernel's NBD client (/dev/nbdN) served by the daemon
// itself, or a loop device (raw files) or a FUSE file with a loop device on
// top (any stack). Without a path named, the best the kernel has is used
// (via.go): ublk, then nbd, then loop or FUSE.
//
// What is open is kept in a state file, written atomically after every
// change; a daemon that starts again adopts the loop devices its
// predecessor left attached and rebuilds the FUSE exports that died with
// it, reconfigures the /dev/nbdN and recovers the /dev/ublkbN its
// predecessor served (their I/O waits meanwhile). On shutdown (context
// cancelled) every disk is flushed and detached.
//
// The daemon never does I/O to a device it serves from a path that the
// serving depends on: FUSE requests are answered by go-fuse's goroutines,
// NBD requests by the nbd.Server's, ublk requests by the ublk queues'; none
// takes the daemon's locks.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"vdisk/internal/api"
)

// shutdownTimeout bounds how long shutdown waits for API requests in flight.
const shutdownTimeout = 30 * time.Second

// probeTimeout bounds the probe of an existing socket at start.
const probeTimeout = 2 * time.Second

// Options configure a daemon.
type Options struct {
	// Socket is the control socket's path; default api.DefaultSocket.
	Socket string
	// StateDir holds the state file; default api.DefaultStateDir.
	StateDir string
	// RunDir holds the FUSE mount points (RunDir/mnt/<id>); default the
	// socket's directory.
	RunDir string
	// Version is reported by GET /v1/version.
	Version string
	// Logger receives the daemon's log; required.
	Logger *slog.Logger
}

// Validate fills defaults and checks o.
func (o *Options) Validate() error {
	if o.Socket == "" {
		o.Socket = api.DefaultSocket
	}
	if o.StateDir == "" {
		o.StateDir = api.DefaultStateDir
	}
	if o.RunDir == "" {
		o.RunDir = filepath.Dir(o.Socket)
	}
	if o.Logger == nil {
		return errors.New("daemon: no logger")
	}
	var err error
	for _, p := range []*string{&o.Socket, &o.StateDir, &o.RunDir} {
		if *p, err = filepath.Abs(*p); err != nil {
			return fmt.Errorf("daemon: %w", err)
		}
	}
	return nil
}

// Daemon is the registry of open disks and the API over it. Its methods
// are safe for concurrent use: mutating operations (open, close, restore,
// shutdown) run one at a time under opMu; mu guards the map for readers.
type Daemon struct {
	opt Options
	log *slog.Logger

	// opMu serialises operations that attach or detach disks.
	opMu sync.Mutex
	// mu guards disks and closing.
	mu    sync.Mutex
	disks map[string]*disk
	// closing is set once shutdown starts; no disk is opened after.
	closing bool

	// stop is closed by Shutdown; lingering counts the goroutines that
	// keep lazily detached FUSE disks served (see linger); background
	// counts the other goroutines Shutdown waits for (retakeLater), which
	// may take opMu and so are waited for after Shutdown releases it.
	stop       chan struct{}
	lingering  sync.WaitGroup
	background sync.WaitGroup

	// probe reports the kernel's module-backed attach paths; tests
	// replace it.
	probe func() kernelPaths
}

// New returns a daemon with no disks. Run serves it; tests may call
// Handler and Restore directly.
func New(opt Options) (*Daemon, error) {
	if err := opt.Validate(); err != nil {
		return nil, err
	}
	return &Daemon{opt: opt, log: opt.Logger, disks: make(map[string]*disk), stop: make(chan struct{}), probe: probeKernel}, nil
}

// Run starts a daemon, serves until ctx is cancelled, then closes every
// disk and returns. It refuses to start (ErrRunning) when another daemon
// answers on the socket.
func Run(ctx context.Context, opt Options) error {
	d, err := New(opt)
	if err != nil {
		return err
	}
	ln, unlock, err := listen(d.opt.Socket)
	if err != nil {
		return err
	}
	defer unlock()
	defer os.Remove(d.opt.Socket)
	return d.Serve(ctx, ln)
}

// Serve restores the disks of the state file, then serves the API on ln
// until ctx is cancelled, then shuts down: it stops taking requests and
// closes every disk (flush, detach). It closes ln.
func (d *Daemon) Serve(ctx context.Context, ln net.Listener) error {
	d.Restore(ctx)
	srv := &http.Server{
		Handler:           d.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(d.log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	d.log.Info("vdisk daemon ready", "socket", d.opt.Socket, "state", d.opt.StateDir, "pid", os.Getpid())
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		d.log.Warn("stop API", "err", err)
	}
	if serveErr == nil {
		serveErr = <-errc
	}
	d.Shutdown()
	if errors.Is(serveErr, http.ErrServerClosed) {
		return nil
	}
	return serveErr
}

// listen takes the socket: it locks socket.lock (so that two daemons
// starting at once cannot both win), refuses if a daemon answers on the
// socket, removes a stale socket, listens and sets mode 0600. unlock
// releases the lock.
func listen(socket string) (ln net.Listener, unlock func(), err error) {
	if err := os.MkdirAll(filepath.Dir(socket), 0o755); err != nil {
		return nil, nil, fmt.Errorf("daemon: %w", err)
	}
	lock, err := os.OpenFile(socket+".lock", os.O_CREATE|os.O_RDWR|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("daemon: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, nil, fmt.Errorf("daemon: %w on %s", ErrRunning, socket)
		}
		return nil, nil, fmt.Errorf("daemon: lock %s.lock: %w", socket, err)
	}
	unlock = func() { lock.Close() }
	if c, err := net.DialTimeout("unix", socket, probeTimeout); err == nil {
		c.Close()
		unlock()
		return nil, nil, fmt.Errorf("daemon: %w on %s", ErrRunning, socket)
	}
	if err := os.Remove(socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		unlock()
		return nil, nil, fmt.Errorf("daemon: remove stale socket: %w", err)
	}
	ln, err = net.Listen("unix", socket)
	if err != nil {
		unlock()
		return nil, nil, fmt.Errorf("daemon: %w", err)
	}
	if err := os.Chmod(socket, 0o600); err != nil {
		ln.Close()
		unlock()
		return nil, nil, fmt.Errorf("daemon: %w", err)
	}
	return ln, unlock, nil
}

// Shutdown closes every disk: flush, then detach; a busy device is
// detached lazily. It is called by Serve; after it no disk can be opened.
func (d *Daemon) Shutdown() {
	d.opMu.Lock()
	defer d.background.Wait() // runs after the unlock below
	defer d.opMu.Unlock()
	d.mu.Lock()
	if d.closing {
		d.mu.Unlock()
		return
	}
	d.closing = true
	all := make([]*disk, 0, len(d.disks))
	for _, dk := range d.disks {
		all = append(all, dk)
	}
	d.mu.Unlock()
	for _, dk := range all {
		if err := d.closeDisk(dk, true); err != nil {
			d.log.Error("close disk at shutdown", "id", dk.rec.ID, "file", dk.rec.File, "err", err)
			continue
		}
		d.log.Info("closed", "id", dk.rec.ID, "file", dk.rec.File, "device", dk.rec.Device)
	}
	d.saveLocked()
	close(d.stop)
	d.lingering.Wait()
}
