package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

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
	var runDir string
	var openTimeout time.Duration
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Run the vdisk daemon (started on demand by open, list, info, close)",
		Long: "The daemon owns every open disk: it serves the control API on a unix socket (mode 0600),\n" +
			"keeps its state in STATE-DIR/state.json, re-opens its disks when it starts again, and\n" +
			"flushes and detaches every disk on SIGTERM. One runs per host, as root.\n\n" +
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
			return daemon.Run(cmd.Context(), daemon.Options{
				Socket:      client.SocketPath(f.socket),
				StateDir:    client.StateDir(f.stateDir),
				RunDir:      runDir,
				Version:     Version,
				Logger:      e.log,
				OpenTimeout: openTimeout,
			})
		},
	}
	cmd.Flags().StringVar(&f.socket, "socket", "", "control socket (default $VDISK_SOCKET or /run/vdisk/vdisk.sock)")
	cmd.Flags().StringVar(&f.stateDir, "state-dir", "", "state directory (default $VDISK_STATE_DIR or /var/lib/vdisk)")
	cmd.Flags().DurationVar(&openTimeout, "open-timeout", daemon.DefaultOpenTimeout, "give up opening an image (or restoring one at start) whose storage does not answer after this long")
	cmd.Flags().StringVar(&runDir, "run-dir", "", "directory for FUSE mount points (default: the socket's directory)")
	return cmd
}
