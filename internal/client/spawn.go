package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// StartTimeout bounds how long Ensure waits for a daemon it started to
// answer.
const StartTimeout = 15 * time.Second

// startPoll is how often Ensure probes a starting daemon.
const startPoll = 50 * time.Millisecond

// exitGrace is how long Ensure keeps probing after the daemon it started
// exited: a daemon started at the same moment by another command may have
// taken the socket and be about to answer.
const exitGrace = time.Second

// logTail bounds how much of the daemon's log Ensure quotes in an error.
const logTail = 2048

// Spawn says how to start a daemon.
type Spawn struct {
	// Exe is the vdisk executable; Args its arguments (e.g. "daemon",
	// "--socket", ...).
	Exe  string
	Args []string
	// LogFile receives the daemon's stdout and stderr (appended).
	LogFile string
}

// Ensure returns nil once a daemon answers on c's socket. When none does it
// starts one as sp says, detached in its own session, and waits for it to
// answer, at most StartTimeout. It starts no goroutine: the child is reaped
// here if it dies early, and by init once this process is gone.
func (c *Client) Ensure(ctx context.Context, sp Spawn) error {
	_, err := c.Version(ctx)
	if err == nil || !errors.Is(err, ErrNoDaemon) {
		return err
	}
	for range maxSpawns {
		var again bool
		if again, err = c.spawn(ctx, sp); !again {
			return err
		}
	}
	return err
}

// maxSpawns bounds the daemons Ensure starts: one that exits at once
// because the previous daemon, killed, still held the socket's lock is
// followed by another.
const maxSpawns = 3

// spawn starts one daemon and waits for a daemon to answer. again reports
// that it exited without any daemon answering, for a retry.
func (c *Client) spawn(ctx context.Context, sp Spawn) (again bool, err error) {
	if err := os.MkdirAll(filepath.Dir(sp.LogFile), 0o700); err != nil {
		return false, fmt.Errorf("%w: create log directory: %v", ErrDaemonStart, err)
	}
	logf, err := os.OpenFile(sp.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return false, fmt.Errorf("%w: open log: %v", ErrDaemonStart, err)
	}
	defer logf.Close()
	fi, _ := logf.Stat()
	var logStart int64
	if fi != nil {
		logStart = fi.Size()
	}
	cmd := exec.Command(sp.Exe, sp.Args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Dir = "/"
	if err := cmd.Start(); err != nil {
		return false, fmt.Errorf("%w: %v", ErrDaemonStart, err)
	}
	pid := cmd.Process.Pid
	ctx, cancel := context.WithTimeout(ctx, StartTimeout)
	defer cancel()
	t := time.NewTicker(startPoll)
	defer t.Stop()
	var exitedAt time.Time
	for {
		_, err := c.Version(ctx)
		if err == nil {
			return false, nil
		}
		if exitedAt.IsZero() {
			var ws syscall.WaitStatus
			if p, _ := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil); p == pid {
				exitedAt = time.Now()
			}
		} else if time.Since(exitedAt) > exitGrace {
			// It exited, and no other daemon (one that won a race to
			// start) came up meanwhile.
			return true, fmt.Errorf("%w: it exited: %s (log: %s)", ErrDaemonStart, tail(sp.LogFile, logStart), sp.LogFile)
		}
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("%w: no answer on %s after %v (log: %s)", ErrDaemonStart, c.socket, StartTimeout, sp.LogFile)
		case <-t.C:
		}
	}
}

// tail returns the last line the daemon logged after off.
func tail(name string, off int64) string {
	b, err := os.ReadFile(name)
	if err != nil || int64(len(b)) <= off {
		return "no output"
	}
	b = bytes.TrimSpace(b[off:])
	if len(b) > logTail {
		b = b[len(b)-logTail:]
	}
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[i+1:]
	}
	return strings.TrimSpace(string(b))
}
