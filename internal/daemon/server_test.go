package daemon

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"vdisk/internal/api"
)

func TestOpenErrors(t *testing.T) {
	td := startDaemon(t, "")
	ctx := context.Background()
	// A FIFO would block an open that waited for a writer.
	fifo := filepath.Join(td.dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		req  api.OpenRequest
		code string
		msg  string
	}{
		{name: "directory", req: api.OpenRequest{File: td.dir, Create: true}, code: api.CodeIsDirectory, msg: "is a directory"},
		{name: "device", req: api.OpenRequest{File: "/dev/null", Create: true}, code: api.CodeIsDevice, msg: "is a device"},
		{name: "parent missing", req: api.OpenRequest{File: filepath.Join(td.dir, "nodir", "a.img"), Create: true}, code: api.CodeNoParent, msg: "does not exist"},
		{name: "missing, no create", req: api.OpenRequest{File: filepath.Join(td.dir, "a.img")}, code: api.CodeNoFile, msg: "does not exist"},
		{name: "missing read-only", req: api.OpenRequest{File: filepath.Join(td.dir, "a.img"), Create: true, ReadOnly: true}, code: api.CodeNoFile, msg: "read-only"},
		{name: "size not sector multiple", req: api.OpenRequest{File: filepath.Join(td.dir, "a.img"), Create: true, Size: 1000}, code: api.CodeInvalidSize, msg: "multiple of 512"},
		{name: "negative size", req: api.OpenRequest{File: filepath.Join(td.dir, "a.img"), Create: true, Size: -512}, code: api.CodeInvalidSize, msg: "size"},
		{name: "bad via", req: api.OpenRequest{File: filepath.Join(td.dir, "a.img"), Create: true, Via: "iscsi"}, code: api.CodeBadVia, msg: "attach path"},
		{name: "unknown format", req: api.OpenRequest{File: filepath.Join(td.dir, "a.img"), Create: true, Format: "qcow9"}, code: api.CodeUnknownFormat, msg: "qcow9"},
		{name: "no file", req: api.OpenRequest{}, code: api.CodeBadRequest, msg: "no file"},
		{name: "fifo", req: api.OpenRequest{File: fifo, Create: true}, code: api.CodeBadRequest, msg: "not a regular file"},
		{name: "relative backing dir", req: api.OpenRequest{File: filepath.Join(td.dir, "a.img"), Create: true, BackingDirs: []string{"base"}}, code: api.CodeBadRequest, msg: "not an absolute path"},
		{name: "backing dir missing", req: api.OpenRequest{File: filepath.Join(td.dir, "a.img"), Create: true, BackingDirs: []string{filepath.Join(td.dir, "none")}}, code: api.CodeBadRequest, msg: "backing directory"},
		{name: "backing dir a file", req: api.OpenRequest{File: filepath.Join(td.dir, "a.img"), Create: true, BackingDirs: []string{fifo}}, code: api.CodeBadRequest, msg: "not a directory"},
		{name: "backing dir of s3", req: api.OpenRequest{File: "s3://bucket/x", BackingDirs: []string{td.dir}}, code: api.CodeBadRequest, msg: "backing directories do not apply"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := td.c.Open(ctx, tt.req)
			e := wantCode(t, err, tt.code)
			if !strings.Contains(e.Message, tt.msg) || strings.Contains(e.Message, "\n") {
				t.Fatalf("message %q, want one line containing %q", e.Message, tt.msg)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(td.dir, "a.img")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a failed open left a file behind: %v", err)
	}
	_, err := td.c.Disk(ctx, "0123456789ab")
	wantCode(t, err, api.CodeNotFound)
	_, err = td.c.CloseDisk(ctx, "0123456789ab", false)
	wantCode(t, err, api.CodeNotFound)
	_, err = td.c.Inspect(ctx, api.InspectRequest{File: filepath.Join(td.dir, "none.img")})
	wantCode(t, err, api.CodeNoFile)
}

func TestRawHTTP(t *testing.T) {
	td := startDaemon(t, "")
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", td.socket)
	}}}
	defer hc.CloseIdleConnections()
	tests := []struct {
		name, method, path, body string
		status                   int
		code                     string
	}{
		{name: "malformed json", method: "POST", path: "/v1/disks", body: "{", status: 400, code: api.CodeBadRequest},
		{name: "unknown endpoint", method: "GET", path: "/v2/disks", status: 404, code: api.CodeNotFound},
		{name: "bad force", method: "DELETE", path: "/v1/disks/0123456789ab?force=maybe", status: 400, code: api.CodeBadRequest},
		{name: "oversized body", method: "POST", path: "/v1/disks", body: `{"file":"` + strings.Repeat("a", maxRequest) + `"}`, status: 400, code: api.CodeBadRequest},
		{name: "list", method: "GET", path: "/v1/disks", status: 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, "http://vdisk"+tt.path, strings.NewReader(tt.body))
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.status || tt.code != "" && !strings.Contains(string(b), `"code": "`+tt.code+`"`) {
				t.Fatalf("%s %s: %d %s; want %d %s", tt.method, tt.path, resp.StatusCode, b, tt.status, tt.code)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Fatalf("content type %q", ct)
			}
		})
	}
}

func TestListen(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "s.sock")
	// A stale socket (nobody listening) is replaced.
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	ln, unlock, err := listen(sock)
	if err != nil {
		t.Fatalf("listen over a stale socket: %v", err)
	}
	defer unlock()
	defer ln.Close()
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket mode %v, %v; want a socket of mode 0600", fi.Mode(), err)
	}
	// A second daemon is refused while the first holds the socket.
	if _, _, err := listen(sock); !errors.Is(err, ErrRunning) {
		t.Fatalf("second listen: %v, want ErrRunning", err)
	}
}

func TestOpenCloseLoop(t *testing.T) {
	needKernel(t)
	td := startDaemon(t, "")
	ctx := context.Background()
	file := filepath.Join(td.dir, "a.img")
	d, err := td.c.Open(ctx, api.OpenRequest{File: file, Create: true})
	if err != nil {
		t.Fatal(err)
	}
	if d.ID != api.DiskID(file) || d.File != file || d.Size != api.DefaultSize || d.Sectors != api.DefaultSize/512 ||
		d.Via != api.ViaLoop || d.Format != "raw" || d.State != api.StateOpen || d.ReadOnly || !d.Writable ||
		d.Major != 7 || !strings.HasPrefix(d.Device, "/dev/loop") || d.Geometry.Cylinders != 12 || d.MediaType != api.MediaFixed {
		t.Fatalf("record %+v", d)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(file, &st); err != nil || st.Size != api.DefaultSize || st.Blocks*512 >= api.DefaultSize {
		t.Fatalf("created file: size %d, %d blocks, %v; want sparse 100 MiB", st.Size, st.Blocks, err)
	}
	if err := syscall.Stat(d.Device, &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFBLK {
		t.Fatalf("%s is not a block device: %v", d.Device, err)
	}
	// Already open: refused with the device and id, or reused.
	_, err = td.c.Open(ctx, api.OpenRequest{File: file, Create: true})
	e := wantCode(t, err, api.CodeAlreadyOpen)
	if !strings.Contains(e.Message, d.Device) || !strings.Contains(e.Message, d.ID) || e.Disk == nil || e.Disk.Device != d.Device {
		t.Fatalf("already open: %+v", e)
	}
	r, err := td.c.Open(ctx, api.OpenRequest{File: file, Reuse: true})
	if err != nil || r.Device != d.Device {
		t.Fatalf("reuse: %+v, %v", r, err)
	}
	if g, err := td.c.Disk(ctx, d.ID); err != nil || !reflect.DeepEqual(*g, *d) {
		t.Fatalf("get: %+v, %v", g, err)
	}
	if l, err := td.c.List(ctx); err != nil || len(l) != 1 || !reflect.DeepEqual(l[0], *d) {
		t.Fatalf("list: %+v, %v", l, err)
	}
	im, err := td.c.Inspect(ctx, api.InspectRequest{File: file})
	if err != nil || !im.Open || im.Size != d.Size || im.ID != d.ID {
		t.Fatalf("inspect open: %+v, %v", im, err)
	}
	// Write through the device; once close returns it is in the file.
	want := []byte("written through the loop device")
	dev, err := os.OpenFile(d.Device, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dev.WriteAt(want, 1<<20); err != nil {
		t.Fatal(err)
	}
	dev.Close()
	if _, err := td.c.CloseDisk(ctx, d.ID, false); err != nil {
		t.Fatal(err)
	}
	if got := readAllAt(t, file, 1<<20, len(want)); string(got) != string(want) {
		t.Fatalf("file holds %q after close, want %q", got, want)
	}
	if l, _ := td.c.List(ctx); len(l) != 0 {
		t.Fatalf("list after close: %+v", l)
	}
	if sds, err := loadState(td.stateDir); err != nil || len(sds) != 0 {
		t.Fatalf("state after close: %+v, %v", sds, err)
	}
	im, err = td.c.Inspect(ctx, api.InspectRequest{File: file})
	if err != nil || im.Open || im.Size != api.DefaultSize || im.Format != "raw" || !im.Writable || im.Allocated == 0 {
		t.Fatalf("inspect closed: %+v, %v", im, err)
	}
}

func TestOpenReadOnlyAndLocked(t *testing.T) {
	needKernel(t)
	td := startDaemon(t, "")
	ctx := context.Background()
	file := filepath.Join(td.dir, "ro.img")
	if err := os.WriteFile(file, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := td.c.Open(ctx, api.OpenRequest{File: file, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if !d.ReadOnly || d.Writable {
		t.Fatalf("record %+v, want read-only", d)
	}
	dev, err := os.OpenFile(d.Device, os.O_RDWR, 0)
	if err == nil {
		_, err = dev.WriteAt([]byte("x"), 0)
		dev.Close()
	}
	if err == nil {
		t.Fatal("wrote to a read-only disk")
	}
	if _, err := td.c.CloseDisk(ctx, d.ID, false); err != nil {
		t.Fatal(err)
	}

	// Another process's lock: a clear refusal.
	lf, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	_, err = td.c.Open(ctx, api.OpenRequest{File: file})
	wantCode(t, err, api.CodeLocked)
}

// waitUnlocked waits, at most lockWait, until nobody holds file's lock.
func waitUnlocked(t *testing.T, file string) {
	t.Helper()
	deadline := time.Now().Add(lockWait)
	for {
		f, err := os.Open(file)
		if err != nil {
			t.Fatal(err)
		}
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		f.Close()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still locked after %v: %v", file, lockWait, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// lockWait bounds the wait for a lazily detached image to be released.
const lockWait = 20 * time.Second

func TestCloseBusy(t *testing.T) {
	needKernel(t)
	for _, via := range []string{api.ViaLoop, api.ViaFUSE} {
		t.Run(via, func(t *testing.T) {
			if via == api.ViaFUSE {
				if err := checkFUSE(); err != nil {
					t.Skip(err)
				}
			}
			td := startDaemon(t, "")
			ctx := context.Background()
			file := filepath.Join(td.dir, "busy.img")
			d, err := td.c.Open(ctx, api.OpenRequest{File: file, Create: true, Size: 8 << 20, Via: via})
			if err != nil {
				t.Fatal(err)
			}
			// O_EXCL claims the device as a mount does.
			h, err := os.OpenFile(d.Device, os.O_RDWR|syscall.O_EXCL, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			want := []byte("acknowledged before the forced close")
			if _, err := h.WriteAt(want, 4096); err != nil {
				t.Fatal(err)
			}
			if err := h.Sync(); err != nil {
				t.Fatal(err)
			}
			_, err = td.c.CloseDisk(ctx, d.ID, false)
			if e := wantCode(t, err, api.CodeBusy); !strings.Contains(e.Message, "--force") {
				t.Fatalf("busy message %q does not say what to do", e.Message)
			}
			if _, err := td.c.Disk(ctx, d.ID); err != nil {
				t.Fatalf("disk gone after a refused close: %v", err)
			}
			if _, err := td.c.CloseDisk(ctx, d.ID, true); err != nil {
				t.Fatalf("forced close: %v", err)
			}
			if got := readAllAt(t, file, 4096, len(want)); string(got) != string(want) {
				t.Fatalf("file holds %q, want %q", got, want)
			}
			// The lazily detached device still works for its user.
			if _, err := h.ReadAt(make([]byte, 512), 0); err != nil {
				t.Fatalf("read from the lazily detached device: %v", err)
			}
			h.Close()
			if l, _ := td.c.List(ctx); len(l) != 0 {
				t.Fatalf("list after forced close: %+v", l)
			}
			// Once its user lets go, the device goes away and the image
			// is released (its lock is free).
			waitUnlocked(t, file)
		})
	}
}
