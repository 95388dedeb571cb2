package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/spf13/cobra"

	"vdisk/internal/client"
	"vdisk/internal/daemon"
)

func init() { register(newDaemonCmd) }

// daemonLogName is the log file, in the socket's directory, of a daemon
// the CLI starts.
const daemonLogName = "vdisk-daemon.log"

// errNotRoot is the one-line answer to a command run without root.
var errNotRoot = errors.New("must run as root to manage disks (try sudo)")

// needRoot fails unless the process is root.
func needRoot() error {
	if os.Geteuid() != 0 {
		return errNotRoot
	}
	return nil
}

// daemonFlags are where a command finds, or starts, the daemon.
type daemonFlags struct {
	socket, stateDir string
}

func (f *daemonFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.socket, "socket", "", "the daemon's control socket (default $VDISK_SOCKET or /run/vdisk/vdisk.sock)")
	cmd.Flags().StringVar(&f.stateDir, "state-dir", "", "the state directory of a daemon this command starts (default $VDISK_STATE_DIR or /var/lib/vdisk)")
}

// connect returns a client of the daemon, starting one (this executable,
// "daemon", detached, logging to the socket's directory) when none answers.
func (f *daemonFlags) connect(ctx context.Context, e *env) (*client.Client, error) {
	if err := needRoot(); err != nil {
		return nil, err
	}
	socket := client.SocketPath(f.socket)
	c := client.New(socket)
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find the vdisk executable to start the daemon: %w", err)
	}
	args := []string{"daemon", "--socket", socket, "--state-dir", client.StateDir(f.stateDir), "--log-level", e.logLevel.Level().String()}
	sp := client.Spawn{Exe: exe, Args: args, LogFile: filepath.Join(filepath.Dir(socket), daemonLogName)}
	if err := c.Ensure(ctx, sp); err != nil {
		return nil, err
	}
	return c, nil
}

func newDaemonCmd(e *env) *cobra.Command {
	var f daemonFlags
	var runDir, metricsListen, socketGroup string
	var openTimeout time.Duration
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Run the vdisk daemon (started on demand by open, list, info, close)",
		Long: "The daemon owns every open disk: it serves the control API on a unix socket (mode 0600,\n" +
			"in a directory only root can write to; it answers root only, or --socket-group),\n" +
			"keeps its state in STATE-DIR/state.json, re-opens its disks when it starts again, and\n" +
			"flushes and detaches every disk on SIGTERM. One runs per host, as root.\n" +
			"Under systemd it takes the socket systemd passes (LISTEN_FDS, vdisk.socket) and\n" +
			"reports READY=1 once it serves and STOPPING=1 when it shuts down.\n\n" +
			"No image can stall it: requests on other images are answered while one image\n" +
			"opens, an open is cancelled when its client hangs up, and an open (or a restore\n" +
			"at start) whose storage does not answer fails after --open-timeout.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := needRoot(); err != nil {
				return err
			}
			if openTimeout <= 0 {
				return fmt.Errorf("--open-timeout %v: want a positive duration", openTimeout)
			}
			ln, err := activatedSocket()
			if err != nil {
				return err
			}
			socket := client.SocketPath(f.socket)
			if ln != nil {
				socket = ln.Addr().String()
			}
			return daemon.Run(cmd.Context(), daemon.Options{
				Socket:        socket,
				Listener:      ln,
				AllowGroup:    socketGroup,
				StateDir:      client.StateDir(f.stateDir),
				RunDir:        runDir,
				Version:       Version,
				Logger:        e.log,
				OpenTimeout:   openTimeout,
				MetricsListen: metricsListen,
			})
		},
	}
	cmd.Flags().StringVar(&f.socket, "socket", "", "control socket (default $VDISK_SOCKET or /run/vdisk/vdisk.sock)")
	cmd.Flags().StringVar(&f.stateDir, "state-dir", "", "state directory (default $VDISK_STATE_DIR or /var/lib/vdisk)")
	cmd.Flags().DurationVar(&openTimeout, "open-timeout", daemon.DefaultOpenTimeout, "give up opening an image (or restoring one at start) whose storage does not answer after this long")
	cmd.Flags().StringVar(&metricsListen, "metrics-listen", "", "serve Prometheus metrics at http://HOST:PORT/metrics (off by default; GET /metrics on the control socket always answers)")
	cmd.Flags().StringVar(&socketGroup, "socket-group", "", "also let members of this group use the control socket (default: root only)")
	cmd.Flags().StringVar(&runDir, "run-dir", "", "directory for FUSE mount points (default: the socket's directory)")
	return cmd
}

// activatedSocket returns the unix socket systemd passed (socket
// activation), or nil when there is none. More than one is refused.
func activatedSocket() (net.Listener, error) {
	lns, err := activation.Listeners()
	if err != nil {
		return nil, fmt.Errorf("daemon: sockets from systemd: %w", err)
	}
	var got []net.Listener
	for _, ln := range lns {
		if ln != nil {
			got = append(got, ln)
		}
	}
	switch {
	case len(got) == 0:
		return nil, nil
	case len(got) > 1:
		for _, ln := range got {
			ln.Close()
		}
		return nil, fmt.Errorf("daemon: systemd passed %d sockets; want one (the control socket)", len(got))
	}
	if _, ok := got[0].(*net.UnixListener); !ok {
		got[0].Close()
		return nil, fmt.Errorf("daemon: systemd passed %s, not a unix socket", got[0].Addr())
	}
	return got[0], nil
}
