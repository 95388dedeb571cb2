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
// No image can stall the daemon: there is no lock held across opening an
// image. Each operation on an image (open, close, resize, restore) holds
// only that image's lock (keyed by its disk id), so two opens of one image
// run one after the other while the rest of the API answers at once. An
// open runs under the API request's context, so a client that hangs up
// cancels it, and under a deadline (Options.OpenTimeout).
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
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"

	"vdisk/internal/api"
	"vdisk/internal/metrics"
)

// shutdownTimeout bounds how long shutdown waits for API requests in flight.
const shutdownTimeout = 30 * time.Second

// probeTimeout bounds the probe of an existing socket at start.
const probeTimeout = 2 * time.Second

// DefaultOpenTimeout bounds one open (the image and its backing files,
// an object store's manifest and lease, the kernel device) unless
// Options.OpenTimeout says otherwise.
const DefaultOpenTimeout = 2 * time.Minute

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
	// OpenTimeout bounds one open or inspection of an image, and each
	// disk's restore at start; 0 means DefaultOpenTimeout.
	OpenTimeout time.Duration
	// Metrics counts the disks' I/O (labels id, format, via); nil means a
	// registry of the daemon's own (NewMetrics). It is served at
	// GET /metrics on the control socket, and on MetricsListen.
	Metrics *metrics.Registry
	// MetricsListen, when set, is a TCP address (HOST:PORT) where GET
	// /metrics is served over plain HTTP.
	MetricsListen string
	// Listener, when set, is the control socket already listening (socket
	// activation: systemd passed it); Run serves it instead of taking
	// Socket itself.
	Listener net.Listener
	// AllowGroup, when set, names a group whose members may use the
	// control socket besides root (the socket is then mode 0660 and of
	// that group); empty means root only.
	AllowGroup string
}

// NewMetrics returns a metrics registry with the daemon's disk labels.
func NewMetrics() *metrics.Registry { return metrics.New("id", "format", "via") }

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
	if o.OpenTimeout < 0 {
		return fmt.Errorf("daemon: open timeout %v is negative", o.OpenTimeout)
	}
	if o.OpenTimeout == 0 {
		o.OpenTimeout = DefaultOpenTimeout
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics()
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
// are safe for concurrent use. An operation that attaches or detaches a
// disk (open, close, resize, restore, a take-back) holds that image's lock
// (lockImage) and is counted in ops; mu guards the maps and is never held
// across I/O to an image.
type Daemon struct {
	opt Options
	log *slog.Logger

	// mu guards disks, locks and closing. Every change to an image's
	// entry in disks is made under that image's lock as well (or by
	// shutdown, once no operation runs), and so are writes to the fields
	// of a disk that readers look at under mu (rec, kern).
	mu    sync.Mutex
	disks map[string]*disk
	// locks holds the per-image locks in use, by disk id.
	locks map[string]*imageLock
	// closing is set once shutdown starts; no operation starts after.
	closing bool
	// ops counts the operations in flight (beginOp); shutdown waits for
	// them after setting closing.
	ops sync.WaitGroup
	// life is cancelled when shutdown starts: it cancels the operations
	// in flight and the take-back goroutines' waits.
	life       context.Context
	cancelLife context.CancelFunc
	// saveMu makes a snapshot of the registry and its write to the state
	// file one step, so that an older snapshot never overwrites a newer.
	saveMu sync.Mutex
	// shutdownOnce runs shutdown once; later calls wait for it.
	shutdownOnce sync.Once

	// stop is closed at the end of shutdown; lingering counts the
	// goroutines that keep lazily detached FUSE disks served (see
	// linger); background counts the take-back goroutines (retakeLater).
	stop       chan struct{}
	lingering  sync.WaitGroup
	background sync.WaitGroup

	// probe reports the kernel's module-backed attach paths; tests
	// replace it.
	probe func() kernelPaths

	// metrics counts the I/O of the disks the daemon serves itself.
	metrics *metrics.Registry
}

// New returns a daemon with no disks. Run serves it; tests may call
// Handler and Restore directly.
func New(opt Options) (*Daemon, error) {
	if err := opt.Validate(); err != nil {
		return nil, err
	}
	life, cancel := context.WithCancel(context.Background())
	return &Daemon{opt: opt, log: opt.Logger, disks: make(map[string]*disk), locks: make(map[string]*imageLock),
		life: life, cancelLife: cancel, stop: make(chan struct{}), probe: probeKernel, metrics: opt.Metrics}, nil
}

// Run starts a daemon, serves until ctx is cancelled, then closes every
// disk and returns. It refuses to start (ErrRunning) when another daemon
// answers on the socket.
func Run(ctx context.Context, opt Options) error {
	d, err := New(opt)
	if err != nil {
		return err
	}
	ln := opt.Listener
	if ln != nil {
		d.log.Info("serving the control socket systemd passed (socket activation)", "socket", ln.Addr().String())
	} else {
		l, unlock, err := listenGroup(d.opt.Socket, d.opt.AllowGroup)
		if err != nil {
			return err
		}
		defer unlock()
		defer os.Remove(d.opt.Socket)
		ln = l
	}
	if d.opt.MetricsListen != "" {
		stop, err := d.metrics.Serve(d.opt.MetricsListen, d.log)
		if err != nil {
			ln.Close()
			return err
		}
		defer stop()
	}
	return d.Serve(ctx, ln)
}

// Serve restores the disks of the state file, then serves the API on ln
// until ctx is cancelled, then shuts down: it stops taking requests and
// closes every disk (flush, detach). It closes ln.
func (d *Daemon) Serve(ctx context.Context, ln net.Listener) error {
	d.Restore(ctx)
	srv := &http.Server{
		Handler:           d.checkPeer(d.Handler()),
		ConnContext:       withPeer,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(d.log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	d.log.Info("vdisk daemon ready", "socket", d.opt.Socket, "state", d.opt.StateDir, "pid", os.Getpid())
	notify(d.log, sddaemon.SdNotifyReady)
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	notify(d.log, sddaemon.SdNotifyStopping)
	// Refuse new operations and cancel those in flight (an open stuck on
	// an unanswering store) so that the server's shutdown need not wait.
	d.stopOps()
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

// Shutdown closes every disk: flush, then detach; a busy device is
// detached lazily. It is called by Serve; after it no disk can be opened.
// It cancels the operations in flight and waits for them first; a second
// call waits for the first to finish.
func (d *Daemon) Shutdown() { d.shutdownOnce.Do(d.shutdown) }

func (d *Daemon) shutdown() {
	d.stopOps()
	d.ops.Wait()
	d.background.Wait()
	// No operation runs now, and none can start: the registry is ours.
	d.mu.Lock()
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
	d.save()
	close(d.stop)
	d.lingering.Wait()
}

// stopOps refuses new operations (CodeShuttingDown) and cancels those in
// flight.
func (d *Daemon) stopOps() {
	d.mu.Lock()
	d.closing = true
	d.mu.Unlock()
	d.cancelLife()
}

// beginOp counts an operation that attaches or detaches disks, unless
// shutdown has started; end marks it done. ctx is parent, cancelled as
// well when shutdown starts.
func (d *Daemon) beginOp(parent context.Context) (ctx context.Context, end func(), err error) {
	d.mu.Lock()
	if d.closing {
		d.mu.Unlock()
		return nil, nil, api.Errorf(api.CodeShuttingDown, "the vdisk daemon is shutting down")
	}
	d.ops.Add(1)
	d.mu.Unlock()
	ctx, cancel := d.withLife(parent)
	return ctx, func() {
		cancel()
		d.ops.Done()
	}, nil
}

// withLife returns parent, cancelled as well when shutdown starts.
func (d *Daemon) withLife(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(parent)
	stop := context.AfterFunc(d.life, cancel)
	return ctx, func() {
		stop()
		cancel()
	}
}

// imageLock is the lock of one image: a value in ch is the holder's.
// refs, guarded by Daemon.mu, counts holders and waiters, so that the
// lock is dropped from Daemon.locks when nobody uses it.
type imageLock struct {
	ch   chan struct{}
	refs int
}

// lockImage takes the lock of the image whose disk id is id, waiting
// while another operation on the same image holds it, at most until ctx
// is done. Operations on other images never wait for it.
func (d *Daemon) lockImage(ctx context.Context, id, file string) (unlock func(), err error) {
	d.mu.Lock()
	l := d.locks[id]
	if l == nil {
		l = &imageLock{ch: make(chan struct{}, 1)}
		d.locks[id] = l
	}
	l.refs++
	d.mu.Unlock()
	release := func() {
		d.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(d.locks, id)
		}
		d.mu.Unlock()
	}
	if ctx.Err() == nil {
		select {
		case l.ch <- struct{}{}:
			return func() { <-l.ch; release() }, nil
		case <-ctx.Done():
		}
	}
	release()
	return nil, d.ctxError(ctx, fmt.Sprintf("waiting for another request on %s", file))
}

// opContext bounds an open or an inspection by Options.OpenTimeout.
func (d *Daemon) opContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeoutCause(ctx, d.opt.OpenTimeout, errOpenTimeout)
}

// errOpenTimeout is the cause of an operation's context that ran out of
// time.
var errOpenTimeout = errors.New("open timeout")

// ctxError explains why ctx ended what was doing: the deadline
// (CodeTimeout), shutdown (CodeShuttingDown), or the client gone.
func (d *Daemon) ctxError(ctx context.Context, doing string) error {
	switch {
	case errors.Is(context.Cause(ctx), errOpenTimeout):
		return api.Errorf(api.CodeTimeout, "%s: gave up after %v (vdisk daemon --open-timeout)", doing, d.opt.OpenTimeout)
	case d.life.Err() != nil:
		return api.Errorf(api.CodeShuttingDown, "%s: the vdisk daemon is shutting down", doing)
	}
	return fmt.Errorf("%s: %w", doing, context.Cause(ctx))
}
