package nbd

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"vdisk/internal/blockdev"
)

// Tests against the real NBD clients of Debian: libnbd's nbdinfo, nbdcopy
// and nbdsh, qemu-io, qemu-img and fio.

// need skips the test when tool is not installed, and fails it under CI.
func need(t *testing.T, tool string) {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is missing; scripts/deps.sh installs it", tool)
		}
		t.Skipf("%s is not installed (scripts/deps.sh installs it)", tool)
	}
}

// fileServer serves a fresh sparse raw image of size bytes as export
// "disk" (and a read-only memory export "ro") and returns the socket, the
// image path and the device.
func fileServer(t *testing.T, size int64) (sock, path string, f *blockdev.File) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "disk.img")
	f, err := blockdev.OpenFile(path, blockdev.FileOptions{Create: true, Size: size})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() }) // after the server's Shutdown
	sock = startServer(t, &Server{Exports: []Export{
		{Name: "disk", Description: "raw test image", Device: f},
		{Name: "ro", Description: "read-only", Device: blockdev.NewMem(1 << 20), ReadOnly: true},
	}})
	return sock, path, f
}

func uri(sock, export string) string {
	return "nbd+unix:///" + export + "?socket=" + sock
}

// run runs a command and fails the test with its output if it fails.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	// nbdsh runs "python3" from PATH; the Debian one has the nbd module.
	cmd.Env = append(os.Environ(), "PATH=/usr/bin:/bin:/usr/sbin:/sbin:"+os.Getenv("PATH"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

func writeRandomFile(t *testing.T, size int) (string, []byte) {
	t.Helper()
	data := randBytes(size)
	// Leave a hole-worthy zero run in the middle.
	clear(data[size/4 : size/2])
	p := filepath.Join(t.TempDir(), "src.raw")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p, data
}

func TestNbdinfo(t *testing.T) {
	need(t, "nbdinfo")
	sock, _, f := fileServer(t, 8<<20)
	f.WriteAt(randBytes(1<<20), 2<<20)

	out := run(t, "nbdinfo", "--list", uri(sock, ""))
	for _, want := range []string{"export=\"disk\"", "description: raw test image", "export=\"ro\"", "is_read_only: true"} {
		if !strings.Contains(out, want) {
			t.Errorf("nbdinfo --list lacks %q:\n%s", want, out)
		}
	}

	var info struct {
		Protocol string `json:"protocol"`
		TLS      bool   `json:"TLS"`
		Exports  []map[string]any
	}
	out = run(t, "nbdinfo", "--json", uri(sock, "disk"))
	if err := json.Unmarshal([]byte(out), &info); err != nil || len(info.Exports) != 1 {
		t.Fatalf("nbdinfo --json: %v\n%s", err, out)
	}
	e := info.Exports[0]
	want := map[string]any{
		"export-name": "disk", "description": "raw test image", "export-size": float64(8 << 20),
		"is_read_only": false, "can_flush": true, "can_fua": true, "can_trim": true, "can_zero": true,
		"can_fast_zero": true, "can_df": true, "can_multi_conn": true, "can_cache": true,
		"block_size_minimum": float64(1), "block_size_maximum": float64(DefaultMaxPayload),
	}
	for k, v := range want {
		if e[k] != v {
			t.Errorf("nbdinfo --json: %s = %v, want %v", k, e[k], v)
		}
	}
	if info.Protocol != "newstyle-fixed" {
		t.Errorf("protocol %q", info.Protocol)
	}
	if ctx, _ := e["contexts"].([]any); len(ctx) != 2 || ctx[0] != "base:allocation" || ctx[1] != "qemu:allocation-depth" {
		t.Errorf("contexts %v", e["contexts"])
	}

	out = run(t, "nbdinfo", "--map", uri(sock, "disk"))
	wantMap := []string{
		"0  2097152    3  hole,zero",
		"2097152  1048576    0  data",
		"3145728  5242880    3  hole,zero",
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != len(wantMap) {
		t.Fatalf("nbdinfo --map:\n%s", out)
	}
	for i, l := range lines {
		if strings.Join(strings.Fields(l), " ") != strings.Join(strings.Fields(wantMap[i]), " ") {
			t.Errorf("map line %d = %q, want %q", i, l, wantMap[i])
		}
	}
}

func TestNbdcopyRoundTrip(t *testing.T) {
	need(t, "nbdcopy")
	const size = 16 << 20
	sock, path, _ := fileServer(t, size)
	src, data := writeRandomFile(t, size)
	run(t, "nbdcopy", "--connections=4", "--requests=32", src, uri(sock, "disk"))
	dst := filepath.Join(t.TempDir(), "dst.raw")
	run(t, "nbdcopy", uri(sock, "disk"), dst)
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("nbdcopy round trip differs")
	}
	img, _ := os.ReadFile(path)
	if !bytes.Equal(img, data) {
		t.Fatal("image differs from the source")
	}
}

const nbdshScript = `
import nbd, os
assert h.get_structured_replies_negotiated()
assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
assert h.can_multi_conn() and h.can_trim() and h.can_zero() and h.can_df() and h.can_fua()
size = h.get_size()
assert size == 16 << 20

buf = os.urandom(1 << 20)
h.pwrite(buf, 0, nbd.CMD_FLAG_FUA)
assert h.pread(len(buf), 0) == buf
h.flush()
h.trim(65536, 65536)
h.zero(65536, 131072, nbd.CMD_FLAG_NO_HOLE)
exp = buf[:65536] + bytes(131072) + buf[196608:]
assert h.pread(len(buf), 0) == exp

# Structured read of a region with data and holes.
chunks = []
def chunk(sub, off, status, err):
    chunks.append((status, off, len(sub)))
    return 0
got = h.pread_structured(2 << 20, 0, chunk)
assert got == exp + bytes((2 << 20) - len(exp)), "structured read content"
assert any(c[0] == nbd.READ_HOLE for c in chunks), chunks
assert any(c[0] == nbd.READ_DATA for c in chunks), chunks

# Block status.
ext = []
def extents(meta, off, entries, err):
    assert meta == nbd.CONTEXT_BASE_ALLOCATION
    ext.extend(entries)
    return 0
h.block_status(4 << 20, 0, extents)
assert ext[0] == 65536 and ext[1] == 0, ext  # data first
assert ext[-1] & 3 == 3, ext  # the never-written tail is a hole
assert sum(ext[0::2]) <= 4 << 20
ext.clear()
h.block_status(4 << 20, 0, extents, nbd.CMD_FLAG_REQ_ONE)
assert len(ext) == 2, ext

# Many concurrent aio requests, answered out of order.
N = 256
bufs = [os.urandom(4096) for _ in range(N)]
cookies = [h.aio_pwrite(bufs[i], (4 << 20) + i * 4096) for i in range(N)]
while h.aio_in_flight() > 0:
    h.poll(-1)
for c in cookies:
    assert h.aio_command_completed(c)
rbufs = [nbd.Buffer(4096) for _ in range(N)]
cookies = [h.aio_pread(rbufs[i], (4 << 20) + i * 4096) for i in range(N)]
while h.aio_in_flight() > 0:
    h.poll(-1)
for i, c in enumerate(cookies):
    assert h.aio_command_completed(c)
    assert rbufs[i].to_bytearray() == bufs[i], i

# Errors come back as exceptions and the connection goes on.
try:
    h.pread(4096, size)
    raise AssertionError("read past the end succeeded")
except nbd.Error as e:
    assert e.errno is not None
h.shutdown()
print("nbdsh script ok")
`

func TestNbdsh(t *testing.T) {
	need(t, "nbdsh")
	sock, _, _ := fileServer(t, 16<<20)
	out := run(t, "nbdsh", "--base-allocation", "-u", uri(sock, "disk"), "-c", nbdshScript)
	if !strings.Contains(out, "nbdsh script ok") {
		t.Fatalf("nbdsh:\n%s", out)
	}
}

// runErr runs a command and returns its output and error.
func runErr(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}
