// Package client is the typed Go client of the vdisk daemon's control API
// (package api), spoken as HTTP+JSON over the daemon's unix socket. The CLI
// is its main user.
//
// A Client is safe for concurrent use. Every method takes a context first:
// cancelling it hangs up, and the daemon cancels what it was doing for the
// call (an open stuck on an image's storage). Errors the daemon reports
// come back as *api.Error carrying the daemon's code and message.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"syscall"

	"vdisk/internal/api"
)

// maxBody bounds what the client reads from one answer.
const maxBody = 16 << 20

// SocketPath returns flag if set, else $VDISK_SOCKET, else
// api.DefaultSocket.
func SocketPath(flag string) string {
	if flag != "" {
		return flag
	}
	if s := os.Getenv(api.SocketEnv); s != "" {
		return s
	}
	return api.DefaultSocket
}

// StateDir returns flag if set, else $VDISK_STATE_DIR, else
// api.DefaultStateDir.
func StateDir(flag string) string {
	if flag != "" {
		return flag
	}
	if s := os.Getenv(api.StateDirEnv); s != "" {
		return s
	}
	return api.DefaultStateDir
}

// Client talks to one daemon.
type Client struct {
	socket string
	hc     *http.Client
}

// New returns a client of the daemon listening on socket. It does not
// connect until the first call.
func New(socket string) *Client {
	var d net.Dialer
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", socket)
		},
		DisableCompression: true,
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr}}
}

// Socket returns the socket path the client dials.
func (c *Client) Socket() string { return c.socket }

// Close releases idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// Version asks the daemon who it is; it is the liveness probe.
func (c *Client) Version(ctx context.Context) (*api.VersionInfo, error) {
	var v api.VersionInfo
	if err := c.do(ctx, http.MethodGet, api.PathVersion, nil, &v); err != nil {
		return nil, err
	}
	return &v, nil
}

// List returns every disk the daemon has, sorted by file.
func (c *Client) List(ctx context.Context) ([]api.Disk, error) {
	var l api.DiskList
	if err := c.do(ctx, http.MethodGet, api.PathDisks, nil, &l); err != nil {
		return nil, err
	}
	return l.Disks, nil
}

// Open opens an image as a disk. An encrypted image opened without
// req.Passphrase fails with api.CodePassphraseRequired: ask for the
// passphrase and call Open again with it. The passphrase goes to the daemon
// over its 0600 socket only; the caller clears req.Passphrase afterwards.
func (c *Client) Open(ctx context.Context, req api.OpenRequest) (*api.Disk, error) {
	var d api.Disk
	if err := c.do(ctx, http.MethodPost, api.PathDisks, req, &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// Disk returns the disk with the id.
func (c *Client) Disk(ctx context.Context, id string) (*api.Disk, error) {
	var d api.Disk
	if err := c.do(ctx, http.MethodGet, api.PathDisk+url.PathEscape(id), nil, &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// CloseDisk closes the disk with the id and returns its last record. With
// force a busy device is detached lazily.
func (c *Client) CloseDisk(ctx context.Context, id string, force bool) (*api.Disk, error) {
	p := api.PathDisk + url.PathEscape(id)
	if force {
		p += "?force=true"
	}
	var d api.Disk
	if err := c.do(ctx, http.MethodDelete, p, nil, &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// Resize grows the open disk with the id to size bytes and returns its
// record.
func (c *Client) Resize(ctx context.Context, id string, size int64) (*api.Disk, error) {
	var d api.Disk
	if err := c.do(ctx, http.MethodPost, api.PathDisk+url.PathEscape(id)+"/resize", api.ResizeRequest{Size: size}, &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// Inspect returns the facts of an image file, open or not.
func (c *Client) Inspect(ctx context.Context, req api.InspectRequest) (*api.Image, error) {
	var im api.Image
	if err := c.do(ctx, http.MethodPost, api.PathInspect, req, &im); err != nil {
		return nil, err
	}
	return &im, nil
}

// do sends one request and decodes the answer into out.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		defer clear(b) // it may hold a passphrase (api.OpenRequest)
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://vdisk"+path, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if isNoDaemon(err) {
			return fmt.Errorf("%w on %s", ErrNoDaemon, c.socket)
		}
		return fmt.Errorf("daemon on %s: %w", c.socket, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return fmt.Errorf("read answer to %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var e api.Error
		if json.Unmarshal(b, &e) != nil || e.Code == "" {
			return fmt.Errorf("daemon answered %s %s with %s", method, path, resp.Status)
		}
		return &e
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("decode answer to %s %s: %w", method, path, err)
	}
	return nil
}

// isNoDaemon reports whether a dial error means nobody listens.
// A reset at connect time comes from a daemon dying with connections in
// its listener's backlog (killed): none is serving.
func isNoDaemon(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET)
}
