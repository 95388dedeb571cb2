package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"vdisk/internal/nbd/nbdtest"
)

// needTools skips the test when a peer tool is missing (never in CI, where
// scripts/deps.sh installs them all).
func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is missing; scripts/deps.sh installs it", tool)
			}
			t.Skipf("%s is not installed (scripts/deps.sh installs it)", tool)
		}
	}
}

// serving starts `vdisk serve args...` in-process and returns the socket
// URI and a stop function that interrupts the server and returns its exit
// status and stderr.
func serving(t *testing.T, args ...string) (uri string, stop func() (int, string)) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	ctx, cancel := context.WithCancel(context.Background())
	var stderr bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, append([]string{"serve", "--unix", sock}, args...), strings.NewReader(""), &bytes.Buffer{}, &stderr)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		select {
		case code := <-done:
			cancel()
			t.Fatalf("serve exited with %d before listening: %s", code, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("serve did not listen on %s: %s", sock, stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	var once sync.Once
	var code int
	stop = func() (int, string) {
		once.Do(func() {
			cancel()
			code = <-done
		})
		return code, stderr.String()
	}
	t.Cleanup(func() { stop() })
	return "nbd+unix:///?socket=" + sock, stop
}

func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return string(out)
}

func TestServeRawRoundTrip(t *testing.T) {
	needTools(t, "nbdinfo", "qemu-io")
	img := filepath.Join(t.TempDir(), "disk.img")
	uri, stop := serving(t, "--create", "--size", "8M", img)

	var info struct {
		Exports []struct {
			Name     string `json:"export-name"`
			Size     int64  `json:"export-size"`
			ReadOnly bool   `json:"is_read_only"`
			CanTrim  bool   `json:"can_trim"`
		} `json:"exports"`
	}
	if err := json.Unmarshal([]byte(runTool(t, "nbdinfo", "--json", uri)), &info); err != nil {
		t.Fatal(err)
	}
	if len(info.Exports) != 1 || info.Exports[0].Size != 8<<20 || info.Exports[0].ReadOnly || !info.Exports[0].CanTrim {
		t.Fatalf("nbdinfo: %+v", info)
	}
	runTool(t, "qemu-io", "-f", "raw", "-c", "write -P 0xab 1M 64k", "-c", "flush", uri)
	out := runTool(t, "qemu-io", "-f", "raw", "-c", "read -P 0xab 1M 64k", "-c", "read -P 0 0 1M", uri)
	if strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("qemu-io read back: %s", out)
	}
	if code, errs := stop(); code != 0 {
		t.Fatalf("serve exited %d: %s", code, errs)
	}
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 8<<20 || b[1<<20] != 0xab || b[1<<20+64<<10-1] != 0xab || b[1<<20+64<<10] != 0 {
		t.Fatalf("image after serve: size %d, bytes %#x %#x", len(b), b[1<<20], b[1<<20+64<<10])
	}
}

func TestServeReadOnlyAndNames(t *testing.T) {
	needTools(t, "nbdinfo", "qemu-io")
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	for _, p := range []string{a, b} {
		if err := os.WriteFile(p, make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	uri, _ := serving(t, "--read-only", "--export-name", "first", a, b)
	list := runTool(t, "nbdinfo", "--list", "--json", uri)
	for _, want := range []string{`"first"`, `"b.img"`} {
		if !strings.Contains(list, want) {
			t.Errorf("nbdinfo --list lacks %s: %s", want, list)
		}
	}
	named := strings.Replace(uri, "nbd+unix:///", "nbd+unix:///b.img", 1)
	out, err := exec.Command("qemu-io", "-f", "raw", "-c", "write 0 512", named).CombinedOutput()
	if err == nil && !strings.Contains(string(out), "Operation not permitted") && !strings.Contains(string(out), "read-only") {
		t.Fatalf("write to a read-only export succeeded: %s", out)
	}
}

func TestServeQcow2(t *testing.T) {
	needTools(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.qcow2")
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "16M")
	runTool(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 3M 200k", img)
	uri, stop := serving(t, img) // probed
	runTool(t, "qemu-io", "-f", "raw", "-c", "write -P 0x33 8M 64k", "-c", "flush", uri)
	raw := filepath.Join(dir, "ref.raw")
	runTool(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", uri, raw)
	if code, errs := stop(); code != 0 {
		t.Fatalf("serve exited %d: %s", code, errs)
	}
	runTool(t, "qemu-img", "check", "-f", "qcow2", img)
	runTool(t, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", img, raw)
	out := runTool(t, "qemu-io", "-f", "qcow2", "-c", "read -P 0x5a 3M 200k", "-c", "read -P 0x33 8M 64k", img)
	if strings.Contains(out, "verification failed") {
		t.Fatalf("qcow2 after serve: %s", out)
	}
}

// binary builds the vdisk binary once per test process.
var binary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "vdisk-cli-test")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "vdisk")
	out, err := exec.Command("go", "build", "-o", bin, "vdisk/cmd/vdisk").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

func TestServeSocketActivation(t *testing.T) {
	needTools(t, "nbdinfo", "nbdcopy")
	bin, err := binary()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	want := make([]byte, 4<<20)
	rand.Read(want[1<<20 : 2<<20])
	if err := os.WriteFile(img, want, 0o600); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(runTool(t, "nbdinfo", "--size", "--", "[", bin, "serve", img, "]")); got != "4194304" {
		t.Fatalf("nbdinfo --size over socket activation: %q", got)
	}
	out := filepath.Join(dir, "copy.img")
	runTool(t, "nbdcopy", "--", "[", bin, "serve", "--read-only", img, "]", out)
	got, err := os.ReadFile(out)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("nbdcopy over socket activation: err %v, equal %v", err, bytes.Equal(got, want))
	}
}

func TestServeBadInput(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "x.img")
	if err := os.WriteFile(img, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"both listeners", []string{"serve", "--unix", dir + "/s", "--listen", "127.0.0.1:0", img}, "exclude each other"},
		{"missing image", []string{"serve", "--unix", dir + "/s", dir + "/nope.img"}, "nope.img"},
		{"cert without key", []string{"serve", "--tls-cert", dir + "/c.pem", img}, "go together"},
		{"ca without cert", []string{"serve", "--tls-ca", dir + "/ca.pem", img}, "needs --tls-cert"},
		{"duplicate names", []string{"serve", "--unix", dir + "/s", img, img}, "two exports named"},
		{"bad size", []string{"serve", "--create", "--size", "lots", dir + "/new.img"}, "--size"},
		{"unknown format", []string{"serve", "--unix", dir + "/s", "--format", "floppy", img}, "floppy"},
		{"no image", []string{"serve"}, "requires at least 1 arg"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errs := run(t, tc.args...)
			if code == 0 || !strings.Contains(errs, tc.want) || strings.Count(strings.TrimSpace(errs), "\n") > 0 {
				t.Fatalf("code %d, stderr %q; want one line containing %q", code, errs, tc.want)
			}
		})
	}
}

// TestServeAllocationDepth: over a three-image qcow2 chain, vdisk serve
// answers qemu:allocation-depth exactly as qemu-nbd -A does (nbdinfo
// --map of both).
func TestServeAllocationDepth(t *testing.T) {
	needTools(t, "qemu-img", "qemu-io", "qemu-nbd", "nbdinfo")
	dir := t.TempDir()
	base, mid, top := filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "mid.qcow2"), filepath.Join(dir, "top.qcow2")
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "8M")
	runTool(t, "qemu-io", "-c", "write -P 1 0 1M", "-c", "write -P 2 4M 1M", base)
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", mid)
	runTool(t, "qemu-io", "-c", "write -P 3 1M 1M", "-c", "write -z 4M 512k", mid)
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", mid, "-F", "qcow2", top)
	runTool(t, "qemu-io", "-c", "write -P 4 2M 64k", "-c", "write -P 5 7M 4k", top)

	uri, _ := serving(t, "--read-only", top)
	ours := runTool(t, "nbdinfo", "--map=qemu:allocation-depth", uri)

	sock := filepath.Join(t.TempDir(), "qemu.sock")
	qn := exec.Command("qemu-nbd", "--read-only", "--allocation-depth", "--format=qcow2", "--persistent", "--socket="+sock, top)
	if err := qn.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { qn.Process.Kill(); qn.Wait() })
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if i > 500 {
			t.Fatal("qemu-nbd did not create its socket")
		}
		time.Sleep(10 * time.Millisecond)
	}
	theirs := runTool(t, "nbdinfo", "--map=qemu:allocation-depth", "nbd+unix:///?socket="+sock)
	if ours != theirs {
		t.Fatalf("qemu:allocation-depth differs\nvdisk:\n%s\nqemu-nbd:\n%s", ours, theirs)
	}
	if !strings.Contains(ours, "backing depth 3") {
		t.Fatalf("no range from the base image in the map:\n%s", ours)
	}
}

// TestServeConnectionBound: by default serve greets 16 clients at once; a
// 17th waits in the backlog until one leaves. nbdcopy's four connections
// fit in the default bound.
func TestServeConnectionBound(t *testing.T) {
	needTools(t, "nbdcopy")
	img := filepath.Join(t.TempDir(), "disk.img")
	uri, _ := serving(t, "--create", "--size", "8M", img)
	sock := strings.TrimPrefix(uri, "nbd+unix:///?socket=")
	greet := func(c net.Conn, wait time.Duration) error {
		c.SetReadDeadline(time.Now().Add(wait))
		var b [18]byte
		_, err := io.ReadFull(c, b[:])
		return err
	}
	var conns []net.Conn
	for i := range defaultMaxConns + 1 {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
		if i < defaultMaxConns {
			if err := greet(c, time.Minute); err != nil {
				t.Fatalf("client %d not greeted: %v", i, err)
			}
		}
	}
	last := conns[defaultMaxConns]
	if err := greet(last, 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("client %d beyond the bound: %v, want no greeting", defaultMaxConns+1, err)
	}
	conns[0].Close()
	if err := greet(last, time.Minute); err != nil {
		t.Fatalf("waiting client not greeted after one left: %v", err)
	}
	for _, c := range conns {
		c.Close()
	}
	out := filepath.Join(t.TempDir(), "copy.raw")
	runTool(t, "nbdcopy", "--connections=4", uri, out)
}

// TestServeTricklingClient: a client that sends its handshake a byte at a
// time is dropped when --handshake-timeout runs out, though it keeps
// sending.
func TestServeTricklingClient(t *testing.T) {
	img := filepath.Join(t.TempDir(), "disk.img")
	uri, _ := serving(t, "--create", "--size", "1M", "--handshake-timeout", "300ms", img)
	c, err := net.Dial("unix", strings.TrimPrefix(uri, "nbd+unix:///?socket="))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	closed := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, c)
		closed <- err
	}()
	// Fixed newstyle flags, then NBD_OPT_LIST over and over.
	stream := []byte{0, 0, 0, 1}
	for range 10000 {
		stream = append(stream, "IHAVEOPT\x00\x00\x00\x03\x00\x00\x00\x00"...)
	}
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case err := <-closed:
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal("the test's deadline passed before the server dropped the client")
			}
			return
		case <-tick.C:
			if i == len(stream) {
				t.Fatal("the whole trickled stream was accepted")
			}
			if _, err := c.Write(stream[i : i+1]); err != nil {
				<-closed
				return
			}
		}
	}
}

// TestServeQemu10ExtendedHeaders: qemu-io and qemu-img 10 against `vdisk
// serve` negotiate extended headers (the debug log says so), send a 5 GiB
// write-zeroes as one request, and map and compare the image.
func TestServeQemu10ExtendedHeaders(t *testing.T) {
	q := nbdtest.Qemu10(t)
	img := filepath.Join(t.TempDir(), "disk.img")
	uri, stop := serving(t, "--log-level", "debug", "-f", "raw", "--create", "--size", "8G", img)
	// qemu-io's trace (on stderr) shows the requests; -u -n: one
	// write-zeroes of 5 GiB that may punch holes.
	b, err := exec.Command(filepath.Join(q, "qemu-io"), "-f", "raw", "--trace", "nbd_send_request",
		"-c", "write -P 0xab 0 1M", "-c", "write -z -u -n 1M 5G", "-c", "write -P 0xcd 7G 64k",
		"-c", "discard 4G 1M", "-c", "flush", "-c", "read -P 0xab 0 1M", "-c", "read -P 0 1M 1M", "-c", "read -P 0xcd 7G 64k", uri).CombinedOutput()
	out := string(b)
	if err != nil || strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "failed") {
		t.Fatalf("qemu-io: %v\n%s", err, out)
	}
	if !regexp.MustCompile(`\.from = 1048576, \.len = 5368709120, .*type = 6 \(write zeroes\)`).MatchString(out) {
		t.Fatalf("the 5 GiB write-zeroes was not one request:\n%s", out)
	}
	m := runTool(t, filepath.Join(q, "qemu-img"), "map", "--output=json", "-f", "raw", uri)
	if !strings.Contains(m, `"start": 7516192768, "length": 65536`) {
		t.Fatalf("qemu-img map: %s", m)
	}
	local := filepath.Join(t.TempDir(), "local.raw")
	f, err := os.Create(local)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Truncate(8 << 30)
	f.WriteAt(bytes.Repeat([]byte{0xab}, 1<<20), 0)
	f.WriteAt(bytes.Repeat([]byte{0xcd}, 64<<10), 7<<30)
	f.Close()
	if c := runTool(t, filepath.Join(q, "qemu-img"), "compare", "-f", "raw", "-F", "raw", local, uri); !strings.Contains(c, "Images are identical") {
		t.Fatalf("qemu-img compare: %s", c)
	}
	code, errs := stop()
	if code != 0 {
		t.Fatalf("serve exited %d: %s", code, errs)
	}
	if !strings.Contains(errs, "extended headers negotiated") || !strings.Contains(errs, "extended_headers=true") {
		t.Fatalf("serve's debug log does not show extended headers:\n%s", errs)
	}
}
