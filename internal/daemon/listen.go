package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"

	"vdisk/internal/api"
)

// listen takes the socket for root only (listenGroup with no group).
func listen(socket string) (net.Listener, func(), error) { return listenGroup(socket, "") }

// listenGroup takes the socket: it makes sure the socket's directory is
// safe (socketDir), locks socket.lock (so that two daemons starting at
// once cannot both win), refuses if a daemon answers on the socket,
// removes a stale socket, and listens under umask 077, so that the socket
// is never reachable by others, not even for an instant. With group, the
// socket is then given to that group, mode 0660. unlock releases the lock.
func listenGroup(socket, group string) (ln net.Listener, unlock func(), err error) {
	gid := -1
	if group != "" {
		if gid, err = lookupGroup(group); err != nil {
			return nil, nil, err
		}
	}
	if err := socketDir(filepath.Dir(socket)); err != nil {
		return nil, nil, err
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
	old := unix.Umask(0o077)
	ln, err = net.Listen("unix", socket)
	unix.Umask(old)
	if err != nil {
		unlock()
		return nil, nil, fmt.Errorf("daemon: %w", err)
	}
	mode := os.FileMode(0o600)
	if gid >= 0 {
		mode = 0o660
		if err := os.Chown(socket, -1, gid); err != nil {
			ln.Close()
			unlock()
			return nil, nil, fmt.Errorf("daemon: %w", err)
		}
	}
	if err := os.Chmod(socket, mode); err != nil {
		ln.Close()
		unlock()
		return nil, nil, fmt.Errorf("daemon: %w", err)
	}
	return ln, unlock, nil
}

// socketDir makes the socket's directory, mode 0700, or checks that an
// existing one is safe: a directory (not a symlink) owned by this user or
// root, that no one else can write to. Anyone who can write to it could
// replace the socket with their own.
func socketDir(dir string) error {
	old := unix.Umask(0o077)
	err := os.MkdirAll(dir, 0o700)
	unix.Umask(old)
	if err != nil {
		return fmt.Errorf("daemon: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return fmt.Errorf("daemon: socket directory %s: %w", dir, err)
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return fmt.Errorf("daemon: socket directory %s is not a directory (a symlink?): refusing it", dir)
	case st.Uid != uint32(os.Geteuid()) && st.Uid != 0:
		return fmt.Errorf("daemon: socket directory %s belongs to uid %d, not to this user (uid %d) or root: refusing it", dir, st.Uid, os.Geteuid())
	case st.Mode&0o022 != 0:
		return fmt.Errorf("daemon: socket directory %s is writable by others (mode %04o): refusing it; chmod go-w it or remove it", dir, st.Mode&0o7777)
	}
	return nil
}

// lookupGroup resolves a group name (or number) to its id.
func lookupGroup(name string) (int, error) {
	g, err := user.LookupGroup(name)
	if err != nil {
		if _, nerr := strconv.Atoi(name); nerr == nil {
			g, err = user.LookupGroupId(name)
		}
	}
	if err != nil {
		return -1, fmt.Errorf("daemon: socket group %q: %w", name, err)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return -1, fmt.Errorf("daemon: socket group %q: gid %q", name, g.Gid)
	}
	return gid, nil
}

// peerKey keys the peer's credentials in a connection's context.
type peerKey struct{}

// peer is what the kernel says about the process at the other end of a
// control connection (SO_PEERCRED); ok is false when it could not say.
type peer struct {
	uid, gid, pid int
	ok            bool
}

// withPeer records the connection's peer credentials in its context
// (http.Server.ConnContext).
func withPeer(ctx context.Context, c net.Conn) context.Context {
	p := peer{}
	if uc, ok := c.(*net.UnixConn); ok {
		if raw, err := uc.SyscallConn(); err == nil {
			var cred *unix.Ucred
			var cerr error
			raw.Control(func(fd uintptr) {
				cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
			})
			if cerr == nil && cred != nil {
				p = peer{uid: int(cred.Uid), gid: int(cred.Gid), pid: int(cred.Pid), ok: true}
			}
		}
	}
	return context.WithValue(ctx, peerKey{}, p)
}

// checkPeer refuses requests from anyone but root and, with
// Options.AllowGroup, the members of that group, with a clear answer
// (403, code "permission"). Connections that are not unix sockets
// (tests serving the handler elsewhere) have no peer and are refused too.
func (d *Daemon) checkPeer(h http.Handler) http.Handler {
	gid := -1
	if d.opt.AllowGroup != "" {
		if g, err := lookupGroup(d.opt.AllowGroup); err == nil {
			gid = g
		}
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, _ := r.Context().Value(peerKey{}).(peer)
		if !p.ok {
			replyErr(w, api.Errorf(api.CodePermission, "the vdisk daemon cannot tell who is calling (no SO_PEERCRED): refused"))
			return
		}
		if allowed(p, gid) {
			h.ServeHTTP(w, r)
			return
		}
		d.log.Warn("refused a control connection", "uid", p.uid, "gid", p.gid, "pid", p.pid)
		msg := fmt.Sprintf("the vdisk daemon serves root only; uid %d is refused (try sudo)", p.uid)
		if gid >= 0 {
			msg = fmt.Sprintf("the vdisk daemon serves root and group %s only; uid %d is refused (try sudo)", d.opt.AllowGroup, p.uid)
		}
		replyErr(w, api.Errorf(api.CodePermission, "%s", msg))
	})
}

// allowed says whether p may use the daemon: root, or a member of gid
// (primary group, or a supplementary one as /proc says).
func allowed(p peer, gid int) bool {
	if p.uid == 0 {
		return true
	}
	if gid < 0 {
		return false
	}
	if p.gid == gid {
		return true
	}
	u, err := user.LookupId(strconv.Itoa(p.uid))
	if err != nil {
		return false
	}
	gids, err := u.GroupIds()
	if err != nil {
		return false
	}
	for _, g := range gids {
		if g == strconv.Itoa(gid) {
			return true
		}
	}
	return false
}

// notify tells systemd about the daemon's state (READY=1, STOPPING=1);
// nothing happens when it was not started by systemd.
func notify(log *slog.Logger, state string) {
	if _, err := sddaemon.SdNotify(false, state); err != nil {
		log.Debug("sd_notify", "state", state, "err", err)
	}
}
