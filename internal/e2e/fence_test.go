package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"vdisk/internal/image/imagetest"
	"vdisk/internal/storage/objstore/s3/s3test"
)

// chunkObject matches the last path segment of a chunk object's key as a
// writer stores it: <chunk>-<epoch>-<seq>.
var chunkObject = regexp.MustCompile(`/[0-9a-f]{16}-[0-9a-f]{16}-[0-9a-f]{16}$`)

// holdProxy forwards every request to an S3 server, except that while
// armed it holds each chunk PUT (its bytes already sent by the client)
// until released, then delivers it whatever became of the client: a
// request on the wire when its sender froze, arriving late.
type holdProxy struct {
	upstream *url.URL
	srv      *httptest.Server

	mu        sync.Mutex
	armed     bool
	release   chan struct{}
	held      chan string // the path of each PUT held
	delivered chan int    // the status of each held PUT once delivered
}

func newHoldProxy(t *testing.T, endpoint string) *holdProxy {
	u, err := url.Parse(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	p := &holdProxy{upstream: u, release: make(chan struct{}), held: make(chan string, 64), delivered: make(chan int, 64)}
	p.srv = httptest.NewServer(http.HandlerFunc(p.serve))
	t.Cleanup(func() {
		p.disarm()
		p.srv.Close()
	})
	return p
}

func (p *holdProxy) arm() {
	p.mu.Lock()
	p.armed = true
	p.mu.Unlock()
}

// disarm delivers what is held and holds nothing more.
func (p *holdProxy) disarm() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.armed {
		p.armed = false
		close(p.release)
	}
}

func (p *holdProxy) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	p.mu.Lock()
	hold := p.armed && r.Method == http.MethodPut && chunkObject.MatchString(r.URL.Path)
	release := p.release
	p.mu.Unlock()
	if hold {
		p.held <- r.URL.Path
		<-release
	}
	// A request of its own: the client may have given up on this one.
	out, err := http.NewRequest(r.Method, p.upstream.Scheme+"://"+p.upstream.Host+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	out.Header = r.Header.Clone()
	out.Host = r.Host // what the client signed
	out.ContentLength = int64(len(body))
	resp, err := http.DefaultTransport.RoundTrip(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		if hold {
			p.delivered <- 0
		}
		return
	}
	defer resp.Body.Close()
	if hold {
		p.delivered <- resp.StatusCode
	}
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
}

// syncBuffer is a bytes.Buffer safe for a process's writes and the
// test's reads.
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

// TestS3Fence: writer A (`vdisk serve --s3-lease-ttl 2s`, through a proxy
// that can hold its chunk PUTs) has flushed data, then a write and flush
// whose chunk PUTs are on the wire, held by the proxy, when A is frozen
// with SIGSTOP. Writer B takes the image over with --force-takeover (A's
// lease stops changing), writes over one of those chunks and flushes. The
// held PUTs are then delivered, and A thawed: its flush fails, it reports
// the lost lease, and further writes fail. A reader sees exactly B's data
// over what A had flushed: none of the late PUTs.
func TestS3Fence(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	imagetest.NeedTool(t, "qemu-io")
	srv := s3test.Need(t)
	e := newEnv(t)
	withS3 := s3Env(srv)
	proxy := newHoldProxy(t, srv.Endpoint)
	viaProxy := func(c *exec.Cmd) {
		withS3(c)
		c.Env = append(c.Env, "VDISK_S3_ENDPOINT="+proxy.srv.URL)
	}
	img := fmt.Sprintf("s3://%s/e2e-fence-%d", srv.Bucket, time.Now().UnixNano())
	e.mustWith(withS3, "create", "--size", "16M", img) // 4 MiB chunks

	serve := func(mod func(*exec.Cmd), args ...string) (*exec.Cmd, string, *syncBuffer) {
		sock := filepath.Join(t.TempDir(), "nbd.sock")
		cmd := exec.Command(bin, append([]string{"serve", "--unix", sock}, args...)...)
		mod(cmd)
		cmd.Env = append(os.Environ(), cmd.Env...)
		stderr := &syncBuffer{}
		cmd.Stderr = stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGCONT)
			cmd.Process.Kill()
			cmd.Wait()
		})
		for i := 0; ; i++ {
			if _, err := os.Stat(sock); err == nil {
				return cmd, "nbd+unix:///?socket=" + sock, stderr
			}
			if i > 1500 {
				t.Fatalf("vdisk serve %v did not listen: %s", args, stderr.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	const pa, pb, pstale = "0xaa", "0xcc", "0xee"

	a, uriA, errA := serve(viaProxy, "--s3-lease-ttl", "2s", img)
	sh(t, "qemu-io", "-f", "raw", "-c", "write -P "+pa+" 0 12M", "-c", "flush", uriA)

	// A writes chunks 1 and 2 and flushes; their PUTs reach the proxy,
	// which holds them; A freezes.
	proxy.arm()
	stale := exec.Command("qemu-io", "-f", "raw", "-c", "write -P "+pstale+" 4M 8M", "-c", "flush", uriA)
	var staleOut syncBuffer
	stale.Stdout, stale.Stderr = &staleOut, &staleOut
	if err := stale.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stale.Process.Kill(); stale.Wait() })
	for range 2 {
		select {
		case path := <-proxy.held:
			t.Logf("held A's PUT %s", path)
		case <-time.After(cmdTimeout):
			t.Fatalf("A's chunk PUTs did not reach the proxy: %s", errA.String())
		}
	}
	if err := a.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}

	// B takes over once A's lease has not changed for its TTL, writes
	// chunk 1 and flushes.
	frozen := time.Now()
	b, uriB, errB := serve(withS3, "--force-takeover", img)
	// For the record (never asserted): how long B waited to be sure A
	// stopped renewing (A's TTL less what the store's clock says passed).
	t.Logf("B took over %v after A froze", time.Since(frozen).Round(time.Millisecond))
	sh(t, "qemu-io", "-f", "raw", "-c", "write -P "+pb+" 4M 4M", "-c", "flush", uriB)

	// A's PUTs are delivered now, after B's flush, and A thaws.
	proxy.disarm()
	for range 2 {
		if code := <-proxy.delivered; code/100 != 2 {
			t.Fatalf("a late PUT was answered %d; the test wants it stored", code)
		}
	}
	if err := a.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	err := stale.Wait()
	if err == nil && !strings.Contains(strings.ToLower(staleOut.String()), "fail") {
		t.Fatalf("A's flush succeeded after the takeover:\n%s", staleOut.String())
	}
	t.Logf("A's client after the thaw: %v\n%s", err, staleOut.String())
	deadline := time.Now().Add(cmdTimeout)
	for !strings.Contains(errA.String(), "lease lost") {
		if time.Now().After(deadline) {
			t.Fatalf("A does not report the lost lease:\n%s", errA.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A stops writing: a new write and flush fail too.
	out, _ := exec.Command("qemu-io", "-f", "raw", "-c", "write -P "+pstale+" 0 1M", "-c", "flush", uriA).CombinedOutput()
	if !strings.Contains(strings.ToLower(string(out)), "fail") {
		t.Fatalf("A still takes writes after losing the lease:\n%s", out)
	}

	// A reader (and B) see B's data over what A flushed, nothing of A's
	// late PUTs.
	check := func(who, uri string) {
		t.Helper()
		out := sh(t, "qemu-io", "-f", "raw", "-r",
			"-c", "read -P "+pa+" 0 4M", "-c", "read -P "+pb+" 4M 4M", "-c", "read -P "+pa+" 8M 4M", "-c", "read -P 0 12M 4M", uri)
		if strings.Contains(out, "fail") {
			t.Fatalf("%s sees other data than B's:\n%s", who, out)
		}
	}
	check("B", uriB)
	_, uriR, _ := serve(withS3, "--read-only", img)
	check("a reader", uriR)
	if err := b.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := b.Wait(); err != nil {
		t.Logf("B's exit: %v\n%s", err, errB.String())
	}
	_, uriR2, _ := serve(withS3, "--read-only", img)
	check("a reader after B closed", uriR2)
	t.Logf("A's log:\n%s", errA.String())
}
