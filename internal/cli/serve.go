package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	sddaemon "github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/cobra"

	"vdisk/internal/api"
	"vdisk/internal/blockdev"
	"vdisk/internal/nbd"
	"vdisk/internal/stack"
)

// defaultMaxConns is serve's default connection bound. qemu-nbd serves one
// client unless told --shared; vdisk advertises multi-conn, and libnbd's
// nbdcopy opens four connections to one server (more would wait in the
// backlog while the first is held: nbdcopy hangs with a bound of 1), so 16
// lets four such clients at once. What each holds is bounded anyway: at
// most --max-buffered of request payloads over all connections, plus about
// 128 KiB of fixed buffers per connection.
const defaultMaxConns = 16

// shutdownGrace bounds how long serve waits for in-flight requests after
// SIGINT/SIGTERM before it closes connections.
const shutdownGrace = 30 * time.Second

type serveOptions struct {
	unix        string
	listen      string
	exportNames []string
	description string
	readOnly    bool
	format      string
	create      bool
	size        string
	tlsCert     string
	tlsKey      string
	tlsCA       string
	maxInFlight int
	maxConns    int
	maxBuffered string
	handshake   time.Duration
	noBacking   bool
	backingDirs []string
	s3          api.S3Options
	crypt       cryptFlags
	metrics     string
	s3observe   func(op, status string, read, written int64)
	s3retry     func()

	cacheFlags  // --cache, --aio
	snapshot    bool
	snapshotDir string
	overlay     string
}

func init() { register(newServeCmd) }

func newServeCmd(e *env) *cobra.Command {
	var o serveOptions
	c := &cobra.Command{
		Use:   "serve IMAGE...",
		Short: "Export images over NBD in the foreground",
		Long: `Serve exports each IMAGE over the NBD protocol until interrupted.

Images may be in any format vdisk reads (probed, or --format), or raw
images in an object store (s3://bucket/prefix, with --s3-endpoint).
The first image is also the default export "". Export names default to the
images' base names. Listens on --unix PATH, or --listen HOST:PORT (default
localhost:10809), or on the sockets systemd passes (LISTEN_FDS), so that
'nbdinfo -- [ vdisk serve disk.img ]' works. Tells systemd READY=1 once it
serves.`,
		Example: `  vdisk serve disk.img
  vdisk serve --unix /tmp/nbd.sock --read-only disk.img
  vdisk serve --create --size 1G --listen 127.0.0.1:10809 new.img
  vdisk serve --snapshot --unix /tmp/nbd.sock golden.qcow2
  vdisk serve --overlay work.qcow2 golden.vhdx`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runServe(cmd.Context(), e, o, args)
		},
	}
	f := c.Flags()
	f.StringVar(&o.unix, "unix", "", "listen on this unix socket path")
	f.StringVar(&o.listen, "listen", "", "listen on HOST:PORT (default localhost:10809)")
	f.StringArrayVar(&o.exportNames, "export-name", nil, "export name for each IMAGE, in order (default: its base name)")
	f.StringVar(&o.description, "description", "", "export description sent to clients")
	f.BoolVarP(&o.readOnly, "read-only", "r", false, "export read-only")
	f.StringVarP(&o.format, "format", "f", "", "image format (default: probe)")
	addS3Flags(f, &o.s3)
	o.crypt.add(f)
	f.BoolVar(&o.noBacking, "no-backing", false, "serve the top image of a backing chain alone")
	f.StringArrayVar(&o.backingDirs, "backing-dir", nil, "also follow files the image names (backing files, parents, extents) inside this directory tree (repeatable); by default only the image's own directory is trusted")
	f.BoolVar(&o.create, "create", false, "create a missing image of --size")
	f.StringVar(&o.size, "size", "100M", "size for --create (K, M, G, T; bare number = MiB)")
	f.StringVar(&o.tlsCert, "tls-cert", "", "TLS certificate (PEM); enables and requires TLS")
	f.StringVar(&o.tlsKey, "tls-key", "", "TLS private key (PEM)")
	f.StringVar(&o.tlsCA, "tls-ca", "", "CA bundle (PEM) to verify client certificates; clients must present one")
	f.IntVar(&o.maxInFlight, "max-in-flight", 0, "requests served at once per connection (0: server default)")
	f.IntVarP(&o.maxConns, "shared", "e", defaultMaxConns, "clients served at once (like qemu-nbd --shared); more wait in the listen backlog for their turn (0: no bound). The default lets multi-connection clients such as nbdcopy (4 connections) work while memory stays bounded by --max-buffered")
	f.StringVar(&o.maxBuffered, "max-buffered", "256M", "bound on the request payloads buffered over all connections (K, M, G; bare number = MiB); a client's next request waits for room")
	f.DurationVar(&o.handshake, "handshake-timeout", nbd.DefaultHandshakeTimeout, "drop a client that has not chosen an export this long after connecting (like qemu-nbd --handshake-limit)")
	o.cacheFlags.add(f)
	addServeMetricsFlag(f, &o.metrics)
	f.BoolVarP(&o.snapshot, "snapshot", "s", false, "throw writes away (like qemu-nbd -s): the image is opened read-only under a temporary qcow2 overlay that reads see and that is gone when serve ends; above an encrypted image the overlay is encrypted with a random key")
	f.StringVar(&o.snapshotDir, "snapshot-dir", "", "directory of --snapshot's temporary overlay (default $TMPDIR, else /tmp); it never holds a name for it where the file system has O_TMPFILE")
	f.StringVar(&o.overlay, "overlay", "", "serve this qcow2 overlay over IMAGE, its base (of any format, or s3://), creating it when missing with IMAGE recorded as its backing file; an existing overlay must record IMAGE")
	return c
}

func runServe(ctx context.Context, e *env, o serveOptions, images []string) error {
	if o.unix != "" && o.listen != "" {
		return errors.New("serve: --unix and --listen exclude each other")
	}
	if len(o.exportNames) > len(images) {
		return fmt.Errorf("serve: %d --export-name flags for %d images", len(o.exportNames), len(images))
	}
	switch {
	case o.snapshotDir != "" && !o.snapshot:
		return errors.New("serve: --snapshot-dir goes with --snapshot")
	case o.snapshot && o.overlay != "":
		return errors.New("serve: --snapshot and --overlay exclude each other")
	case o.overlay != "" && len(images) != 1:
		return errors.New("serve: --overlay puts one overlay over one IMAGE")
	case o.overlay != "" && o.create:
		return errors.New("serve: --overlay makes the overlay when missing; --create does not apply (its base must exist)")
	}
	tlsConf, err := serverTLS(o)
	if err != nil {
		return err
	}
	var size int64
	if o.create {
		if size, err = parseSize(o.size); err != nil {
			return fmt.Errorf("serve: --size: %w", err)
		}
	}

	sm, err := startServeMetrics(e, o.metrics)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	defer sm.close()
	o.s3observe, o.s3retry = sm.storeObserver(), sm.storeRetries()
	if o.maxConns < 0 {
		return fmt.Errorf("serve: --shared %d is negative", o.maxConns)
	}
	maxBuffered, err := parseSize(o.maxBuffered)
	if err != nil {
		return fmt.Errorf("serve: --max-buffered: %w", err)
	}
	if o.handshake <= 0 {
		return fmt.Errorf("serve: --handshake-timeout %v is not positive", o.handshake)
	}
	srv := &nbd.Server{
		TLSConfig:        tlsConf,
		Logger:           e.log,
		MaxInFlight:      o.maxInFlight,
		MaxConnections:   o.maxConns,
		MaxBufferedBytes: maxBuffered,
		HandshakeTimeout: o.handshake,
		Observe:          sm.nbdObserver(),
	}
	seen := map[string]bool{}
	defer func() {
		for _, ex := range srv.Exports {
			if err := ex.Device.Close(); err != nil {
				e.log.Error("close image", "export", ex.Name, "err", err)
			}
		}
	}()
	for i, img := range images {
		name := filepath.Base(img)
		if o.overlay != "" {
			name = filepath.Base(o.overlay)
		}
		if i < len(o.exportNames) {
			name = o.exportNames[i]
		}
		if seen[name] {
			return fmt.Errorf("serve: two exports named %q; set --export-name for each image", name)
		}
		seen[name] = true
		dev, err := openServeImage(ctx, e, img, o, size)
		if err != nil {
			return fmt.Errorf("serve: %w", err)
		}
		srv.Exports = append(srv.Exports, nbd.Export{
			Name:        name,
			Description: o.description,
			Device:      sm.device(dev, name),
			ReadOnly:    o.readOnly,

			MinBlockSize: directMinBlock(o.cacheFlags, dev),
		})
	}

	lns, err := serveListeners(o)
	if err != nil {
		return err
	}
	errc := make(chan error, len(lns))
	for _, ln := range lns {
		go func() { errc <- srv.Serve(ctx, sm.listener(ln)) }()
		e.log.Info("serving", "addr", ln.Addr().String(), "exports", len(srv.Exports))
	}
	if _, err := sddaemon.SdNotify(false, sddaemon.SdNotifyReady); err != nil {
		e.log.Debug("sd_notify", "err", err)
	}

	var serveErr error
	pending := len(lns)
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
		pending--
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		e.log.Warn("shutdown", "err", err)
	}
	for ; pending > 0; pending-- { // every Serve has returned before the devices close
		<-errc
	}
	if serveErr != nil && !errors.Is(serveErr, nbd.ErrServerClosed) {
		return fmt.Errorf("serve: %w", serveErr)
	}
	return nil
}

// openServeImage opens one image for export.
func openServeImage(ctx context.Context, e *env, path string, o serveOptions, createSize int64) (blockdev.Device, error) {
	cache, aio, err := o.modes()
	if err != nil {
		return nil, err
	}
	open, base := path, ""
	if o.overlay != "" {
		open, base = o.overlay, path
	}
	d, err := stack.Open(ctx, open, stack.Options{
		Cache:       cache,
		AIO:         aio,
		Format:      o.format,
		ReadOnly:    o.readOnly,
		Create:      o.create,
		Size:        createSize,
		NoBacking:   o.noBacking,
		BackingDirs: o.backingDirs,
		S3:          o.stackS3(),
		Log:         e.log,

		Passphrase:    o.crypt.passphrase(e),
		KeepEncrypted: o.crypt.noDecrypt,
		AllowDiscards: o.crypt.allowDiscards,

		Snapshot:    o.snapshot,
		SnapshotDir: o.snapshotDir,
		Base:        base,
	})
	if err != nil {
		return nil, err
	}
	if o.snapshot && !o.readOnly {
		e.log.Info("serving a snapshot: writes are thrown away", "path", path, "overlay dir", stack.SnapshotDir(o.snapshotDir))
	}
	if d.Created && base != "" {
		e.log.Info("created overlay", "path", open, "base", base)
		d.Created = false
	}
	if d.Encrypted {
		e.log.Info("unlocked encrypted image", "path", path)
	}
	if d.Created {
		e.log.Info("created image", "path", path, "format", d.Format, "size", createSize)
	}
	return d.Device, nil
}

// serveListeners returns the sockets systemd passed, or the one --unix or
// --listen asks for.
func serveListeners(o serveOptions) ([]net.Listener, error) {
	if files := activation.Files(true); len(files) > 0 {
		var lns []net.Listener
		for _, f := range files {
			ln, err := net.FileListener(f)
			f.Close()
			if err != nil {
				return nil, fmt.Errorf("serve: socket from systemd (%s): %w", f.Name(), err)
			}
			lns = append(lns, ln)
		}
		return lns, nil
	}
	if o.unix != "" {
		if fi, err := os.Lstat(o.unix); err == nil && fi.Mode()&os.ModeSocket != 0 {
			if c, err := net.Dial("unix", o.unix); err == nil {
				c.Close()
				return nil, fmt.Errorf("serve: %s: another server is listening there", o.unix)
			}
			os.Remove(o.unix) // stale socket of a dead server
		}
		ln, err := net.Listen("unix", o.unix)
		if err != nil {
			return nil, fmt.Errorf("serve: %w", err)
		}
		return []net.Listener{ln}, nil
	}
	addr := o.listen
	if addr == "" {
		addr = "localhost:10809"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("serve: %w", err)
	}
	return []net.Listener{ln}, nil
}

// serverTLS builds the TLS configuration from the flags, or nil without TLS.
func serverTLS(o serveOptions) (*tls.Config, error) {
	if o.tlsCert == "" && o.tlsKey == "" {
		if o.tlsCA != "" {
			return nil, errors.New("serve: --tls-ca needs --tls-cert and --tls-key")
		}
		return nil, nil
	}
	if o.tlsCert == "" || o.tlsKey == "" {
		return nil, errors.New("serve: --tls-cert and --tls-key go together")
	}
	cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
	if err != nil {
		return nil, fmt.Errorf("serve: TLS key pair: %w", err)
	}
	conf := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	if o.tlsCA != "" {
		pem, err := os.ReadFile(o.tlsCA)
		if err != nil {
			return nil, fmt.Errorf("serve: --tls-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("serve: --tls-ca %s: no PEM certificates in it", o.tlsCA)
		}
		conf.ClientCAs = pool
		conf.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return conf, nil
}

// stackS3 is how the served images reach their object store, their
// requests counted when metrics are on.
func (o serveOptions) stackS3() stack.S3Options {
	so := stackS3(o.s3)
	so.Observe, so.OnRetry = o.s3observe, o.s3retry
	return so
}
