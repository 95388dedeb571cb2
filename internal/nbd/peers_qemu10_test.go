package nbd

import (
	"bytes"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"vdisk/internal/blockdev"
	"vdisk/internal/nbd/nbdtest"
	"vdisk/internal/nbd/wire"
)

// needQemu10 returns the directory of the qemu 10 tools (nbdtest.Qemu10).
func needQemu10(t *testing.T) string { return nbdtest.Qemu10(t) }

// syncBuffer is a bytes.Buffer safe for a logger and a test at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestQemu10ExtendedHeaders: qemu-io, qemu-img map and qemu-img compare
// 10 against the server, with extended headers negotiated (qemu's trace
// and the server's debug log both say so): a single write-zeroes of 5 GiB,
// block status replies describing more than 4 GiB at once, and only
// extended replies.
func TestQemu10ExtendedHeaders(t *testing.T) {
	q := needQemu10(t)
	const size = 8 << 30
	path := filepath.Join(t.TempDir(), "disk.img")
	f, err := blockdev.OpenFile(path, blockdev.FileOptions{Create: true, Size: size})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	var log syncBuffer
	sock := startServer(t, &Server{
		Exports: []Export{{Name: "disk", Device: f}},
		Logger:  slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	u := uri(sock, "disk")

	trace := []string{"--trace", "nbd_receive_option_reply", "--trace", "nbd_send_request", "--trace", "nbd_receive_*reply*"}
	cmds := []string{
		"write -P 0xab 0 1M",
		"write -P 0xcd 6G 64k",
		"write -z -u -n 1M 5G", // one request of 5 GiB (-n lifts qemu-io's 2 GiB limit); -u: holes may be punched
		"read -P 0 1M 1M",
		"read -P 0xab 0 1M",
		"read -P 0xcd 6G 64k",
		"write -z 6G 4k",
		"read -P 0 6G 4k",
		"discard 7G 1M",
		"read -P 0 7G 1M",
		"flush",
	}
	args := append([]string{"-f", "raw"}, trace...)
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out := run(t, filepath.Join(q, "qemu-io"), append(args, u)...)
	if strings.Contains(out, "fail") || strings.Contains(out, "Pattern verification") {
		t.Fatalf("qemu-io:\n%s", out)
	}
	if !strings.Contains(out, "Received option reply 11 (extended headers), type 1 (ack)") {
		t.Fatalf("qemu-io did not negotiate extended headers:\n%s", out)
	}
	if strings.Contains(out, "simple reply") || strings.Contains(out, "structured reply") {
		t.Fatalf("a compact reply with extended headers:\n%s", out)
	}
	if !regexp.MustCompile(`\.from = 1048576, \.len = 5368709120, .*type = 6 \(write zeroes\)`).MatchString(out) {
		t.Fatalf("the 5 GiB write-zeroes was not one request:\n%s", out)
	}
	if !strings.Contains(log.String(), "extended_headers=true") {
		t.Fatalf("server log:\n%s", log.String())
	}

	// qemu-img map: the zeroed 5 GiB and the tail come back from
	// BLOCK_STATUS_EXT replies each describing more than 4 GiB.
	out = run(t, filepath.Join(q, "qemu-img"), "map", "--output=json", "-f", "raw", u)
	big := false
	for _, m := range regexp.MustCompile(`"length": (\d+), [^}]*"zero": true`).FindAllStringSubmatch(out, -1) {
		n, _ := strconv.ParseUint(m[1], 10, 64)
		big = big || n > 4<<30
	}
	if !big || !strings.Contains(out, `"start": 6442450944, "length": 65536`) {
		t.Fatalf("qemu-img map:\n%s", out)
	}
	var most uint64
	for _, m := range regexp.MustCompile(`msg="nbd: block status" .* described=(\d+)`).FindAllStringSubmatch(log.String(), -1) {
		n, _ := strconv.ParseUint(m[1], 10, 64)
		most = max(most, n)
	}
	if most <= 4<<30 {
		t.Fatalf("no block status reply described more than 4 GiB (most %d):\n%s", most, log.String())
	}
	t.Logf("largest block status reply described %d bytes", most)

	// qemu-img compare against a local copy with the same content.
	local := filepath.Join(t.TempDir(), "local.raw")
	if err := os.WriteFile(local, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(local, size); err != nil {
		t.Fatal(err)
	}
	lf, err := os.OpenFile(local, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	lf.WriteAt(bytes.Repeat([]byte{0xab}, 1<<20), 0)
	lf.WriteAt(bytes.Repeat([]byte{0xcd}, 60<<10), 6<<30+4096)
	lf.Close()
	out = run(t, filepath.Join(q, "qemu-img"), "compare", "-f", "raw", "-F", "raw", local, u)
	if !strings.Contains(out, "Images are identical") {
		t.Fatalf("qemu-img compare:\n%s", out)
	}
	run(t, filepath.Join(q, "qemu-io"), "-f", "raw", "-c", "write -P 0x5a 4G 512", u)
	out, err = runErr(filepath.Join(q, "qemu-img"), "compare", "-f", "raw", "-F", "raw", local, u)
	if err == nil || !strings.Contains(out, "Content mismatch at offset 4294967296") {
		t.Fatalf("qemu-img compare after a change: %v\n%s", err, out)
	}
}

// TestQemuNbd10Server: the package's test client reads, writes and asks
// block status from qemu-nbd 10 with extended headers: only extended
// replies, 64-bit effect lengths and BLOCK_STATUS_EXT over 4 GiB.
func TestQemuNbd10Server(t *testing.T) {
	q := needQemu10(t)
	const size = 8 << 30
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	data := randBytes(1 << 20)
	if f, err := os.OpenFile(img, os.O_WRONLY, 0); err != nil {
		t.Fatal(err)
	} else {
		f.WriteAt(data, 6<<30)
		f.Close()
	}
	sock := filepath.Join(dir, "qemu.sock")
	var qout syncBuffer
	cmd := exec.Command(filepath.Join(q, "qemu-nbd"), "-f", "raw", "-k", sock, "-x", "disk", "--cache=none", "--discard=unmap", img)
	cmd.Stdout, cmd.Stderr = &qout, &qout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	deadline := time.Now().Add(testTimeout)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu-nbd did not listen: %s", qout.String())
		}
		time.Sleep(10 * time.Millisecond)
	}

	c := dial(t, sock)
	gotSize, flags := c.openExt("disk", wire.MetaContextBaseAllocation)
	if gotSize != size {
		t.Fatalf("size %d", gotSize)
	}
	ok := func(what string, r result) {
		t.Helper()
		if r.errno != 0 {
			t.Fatalf("%s: errno %d %q", what, r.errno, r.msg)
		}
	}
	r := c.do(wire.Request{Type: wire.CmdRead, Offset: 6 << 30, Length: 1 << 20}, nil)
	ok("read", r)
	if !bytes.Equal(r.data, data) {
		t.Fatal("read from qemu-nbd differs")
	}
	// The hole before the data is more than 4 GiB, described at once.
	r = c.do(wire.Request{Type: wire.CmdBlockStatus, Length: size}, nil)
	ok("block status", r)
	baseID, okID := c.ids[wire.MetaContextBaseAllocation]
	if !okID {
		t.Fatalf("qemu-nbd selected no base:allocation: %v", c.ids)
	}
	if d := r.byID[baseID]; len(d) == 0 || d[0].Length != 6<<30 || d[0].Flags&uint64(wire.StateZero) == 0 {
		t.Fatalf("block status from qemu-nbd: %+v", r.byID)
	}
	if flags&wire.FlagBlockStatusPayload != 0 {
		p := wire.AppendBlockStatusPayload(nil, size, []uint32{baseID})
		r = c.do(wire.Request{Type: wire.CmdBlockStatus, Cookie: 2}, p)
		ok("filtered block status", r)
		if len(r.byID) != 1 || len(r.byID[baseID]) == 0 {
			t.Fatalf("filtered block status from qemu-nbd: %+v", r.byID)
		}
	} else {
		t.Logf("qemu-nbd does not advertise NBD_FLAG_BLOCK_STATUS_PAYLOAD (flags %#x)", flags)
	}
	ok("write", c.do(wire.Request{Type: wire.CmdWrite, Offset: 4096}, []byte("hello")))
	ok("write zeroes", c.do(wire.Request{Type: wire.CmdWriteZeroes, Offset: 1 << 30, Length: 5<<30 + 4096}, nil))
	r = c.do(wire.Request{Type: wire.CmdRead, Offset: 6 << 30, Length: 8192}, nil)
	ok("read zeroes", r)
	if !blockdev.IsZero(r.data[:4096]) || !bytes.Equal(r.data[4096:], data[4096:8192]) {
		t.Fatal("qemu-nbd's write-zeroes over 4 GiB")
	}
	ok("flush", c.do(wire.Request{Type: wire.CmdFlush}, nil))
	r = c.do(wire.Request{Type: wire.CmdRead, Offset: 4096, Length: 5}, nil)
	ok("read back", r)
	if string(r.data) != "hello" {
		t.Fatalf("read back %q", r.data)
	}
}

// TestLibnbd114Compact: the system's libnbd 1.14 (nbdinfo, nbdcopy, nbdsh)
// predates extended headers; it keeps working with structured replies,
// and the server's log shows no connection with extended headers.
func TestLibnbd114Compact(t *testing.T) {
	for _, tool := range []string{"nbdinfo", "nbdcopy", "nbdsh"} {
		need(t, tool)
	}
	m := blockdev.NewMem(8 << 20)
	m.WriteAt(randBytes(1<<20), 2<<20)
	var log syncBuffer
	sock := startServer(t, &Server{
		Exports: []Export{{Name: "disk", Device: m}},
		Logger:  slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	u := uri(sock, "disk")
	out := run(t, "nbdinfo", "--map", u)
	if !regexp.MustCompile(`(?m)^\s+2097152\s+1048576\s+0\s+data`).MatchString(out) {
		t.Fatalf("nbdinfo --map:\n%s", out)
	}
	dst := filepath.Join(t.TempDir(), "copy.raw")
	run(t, "nbdcopy", u, dst)
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 8<<20)
	m.ReadAt(want, 0)
	if !bytes.Equal(got, want) {
		t.Fatal("nbdcopy copy differs")
	}
	run(t, "nbdsh", "-u", u, "-c", "h.pwrite(b'x' * 512, 0); h.flush(); assert h.pread(512, 0) == b'x' * 512")
	l := log.String()
	if strings.Contains(l, "extended headers negotiated") || strings.Contains(l, "extended_headers=true") || !strings.Contains(l, "structured=true extended_headers=false") {
		t.Fatalf("server log:\n%s", l)
	}
}
