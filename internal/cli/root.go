// Package cli is the vdisk command line: one file per subcommand, each a
// constructor registered with register. Commands write only to the writers
// in env, so tests run them in-process and capture what they print.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"runtime/pprof"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// Version is the program's version, set at build time with
// -ldflags "-X vdisk/internal/cli.Version=..." (scripts/package.sh does).
var Version = "0.1.0-dev"

// Commit is the commit the binary was built from when Go's build
// information does not record it (a build from a git worktree, or with
// -buildvcs=false): set with -ldflags "-X vdisk/internal/cli.Commit=...".
var Commit = ""

// versionString is what --version prints: the version, and the commit the
// binary was built from as Go's build information records it (vcs.revision,
// "+dirty" when the tree had changes), and the Go version.
func versionString() string {
	commit, dirty, goVersion := Commit, false, ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		goVersion = bi.GoVersion
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
	}
	if c, ok := strings.CutSuffix(commit, "+dirty"); ok {
		commit, dirty = c, true
	}
	if commit == "" {
		commit = "unknown"
	}
	if len(commit) > 12 {
		commit = commit[:12]
	}
	if dirty {
		commit += "+dirty"
	}
	v := Version + " (commit " + commit
	if goVersion != "" {
		v += ", " + goVersion
	}
	return v + ")"
}

// env is what every command gets: its I/O streams and the logger.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	log            *slog.Logger
	logLevel       *slog.LevelVar
}

// constructors holds every subcommand's constructor, filled by register
// from each command's file.
var constructors []func(*env) *cobra.Command

// register adds a subcommand constructor. It is called from init functions.
func register(c func(*env) *cobra.Command) { constructors = append(constructors, c) }

// exitError carries a specific exit status out of a command.
type exitError struct {
	code int
	err  error
	// quiet says the command has printed all it has to say (as qemu-img
	// compare does): Main prints nothing more.
	quiet bool
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// newRoot builds the command tree.
func newRoot(e *env) *cobra.Command {
	var level, cpuProfile string
	var stopProfile func()
	root := &cobra.Command{
		Use:   "vdisk",
		Short: "Turn files and disk images into disks",
		Long: "vdisk turns ordinary files and disk images into block devices and NBD exports.\n\n" +
			"Images are untrusted: a file an image names (backing file, parent, extent) is\n" +
			"followed only inside the directory tree of the image that names it, and only\n" +
			"if it is a regular file; qemu follows any path, vdisk deliberately does not.\n" +
			"To open a trusted chain that spans directories, name each further directory\n" +
			"with --backing-dir DIR (repeatable) on open, serve, info and convert, or look\n" +
			"at the top layer alone with --no-backing.",
		Version:       versionString(),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return cmd.Help()
		},
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			var l slog.Level
			if err := l.UnmarshalText([]byte(level)); err != nil {
				return fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
			}
			e.logLevel.Set(l)
			if cpuProfile != "" {
				f, err := os.Create(cpuProfile)
				if err != nil {
					return fmt.Errorf("--cpuprofile: %w", err)
				}
				if err := pprof.StartCPUProfile(f); err != nil {
					f.Close()
					return fmt.Errorf("--cpuprofile: %w", err)
				}
				stopProfile = func() { pprof.StopCPUProfile(); f.Close() }
			}
			return nil
		},
		PersistentPostRun: func(*cobra.Command, []string) {
			if stopProfile != nil {
				stopProfile()
			}
		},
	}
	root.SetVersionTemplate("vdisk {{.Version}}\n")
	root.SetIn(e.stdin)
	root.SetOut(e.stdout)
	root.SetErr(e.stderr)
	root.PersistentFlags().StringVar(&level, "log-level", "info", "log level: debug, info, warn, error")
	root.PersistentFlags().StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile (pprof) of the command to this file")
	_ = root.PersistentFlags().MarkHidden("cpuprofile")
	for _, c := range constructors {
		root.AddCommand(c(e))
	}
	root.AddCommand(newGenManCmd(root))
	return root
}

// newGenManCmd is the hidden "gen-man DIR" command that writes a man page
// per command (vdisk.1, vdisk-open.1, ...) from the command tree, for the
// package (scripts/package.sh).
func newGenManCmd(root *cobra.Command) *cobra.Command {
	return &cobra.Command{
		Use:    "gen-man DIR",
		Short:  "Write the man pages of every command into DIR",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := os.MkdirAll(args[0], 0o755); err != nil {
				return err
			}
			root.DisableAutoGenTag = true
			hdr := &doc.GenManHeader{Title: "VDISK", Section: "1", Source: "vdisk " + Version, Manual: "vdisk manual"}
			return doc.GenManTree(root, hdr, args[0])
		},
	}
}

// Main runs the command line args and returns the process exit status.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	lv := new(slog.LevelVar)
	e := &env{
		stdin:    stdin,
		stdout:   stdout,
		stderr:   stderr,
		logLevel: lv,
		log:      slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lv})),
	}
	root := newRoot(e)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var quiet *exitError
	if errors.As(err, &quiet) && quiet.quiet {
		return quiet.code
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "vdisk") {
		msg = "vdisk: " + msg
	}
	fmt.Fprintln(stderr, msg)
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}
