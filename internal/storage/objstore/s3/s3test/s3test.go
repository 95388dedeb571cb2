// Package s3test runs a real S3 server (versitygw on a posix directory) for
// the tests of the packages on objstore/s3. The first test that calls Need
// finds the versitygw binary (PATH, $GOBIN, ~/go/bin) or installs it with
// `go install`, starts it on a free loopback port and creates the bucket;
// Main, called from TestMain, stops it after the tests. Without the binary
// the tests that Need the server skip, except under CI=true where they
// fail.
//
// External mode: with VDISK_TEST_S3_ENDPOINT set, the tests use that
// server instead (scripts/test-ceph.sh runs them on Ceph RGW this way) and
// start nothing:
//
//	VDISK_TEST_S3_ENDPOINT    the server's URL (http://127.0.0.1:7480)
//	VDISK_TEST_S3_BUCKET      an existing bucket the tests may write in
//	VDISK_TEST_S3_ACCESS_KEY  credentials
//	VDISK_TEST_S3_SECRET_KEY
//	VDISK_TEST_S3_REGION      optional, default us-east-1
//	VDISK_TEST_S3_STOP        optional shell commands that stop and start
//	VDISK_TEST_S3_START       the server, for the tests that take it away
//
// Stop and Start run the hooks (sh -c); without them they return an error
// saying so (CanRestart tells beforehand). Main starts an external server
// the tests left stopped, and removes nothing from the bucket. The tests
// of several packages share the server: run them with `go test -p 1`
// when some stop it.
package s3test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"vdisk/internal/storage/objstore/s3"
)

// Version is the versitygw release the tests install.
const Version = "v1.8.0"

const (
	module     = "github.com/versity/versitygw/cmd/versitygw"
	accessKey  = "vdisktestaccess"
	secretKey  = "vdisktestsecretkey0123456789"
	bucketName = "vdisk-test"
	// startTimeout bounds how long the server may take to accept
	// connections (it is up in well under a second).
	startTimeout = 30 * time.Second
	// stopTimeout bounds a graceful stop before SIGKILL: short, because
	// versitygw waits for its clients' idle keep-alive connections, and
	// nothing it holds needs a graceful stop (its objects are files).
	stopTimeout = time.Second
	// installTimeout bounds `go install` of the server.
	installTimeout = 15 * time.Minute
	// hookTimeout bounds a VDISK_TEST_S3_STOP or _START command.
	hookTimeout = 5 * time.Minute
)

// The environment of external mode (see the package comment).
const (
	EnvEndpoint  = "VDISK_TEST_S3_ENDPOINT"
	EnvBucket    = "VDISK_TEST_S3_BUCKET"
	EnvAccessKey = "VDISK_TEST_S3_ACCESS_KEY"
	EnvSecretKey = "VDISK_TEST_S3_SECRET_KEY"
	EnvRegion    = "VDISK_TEST_S3_REGION"
	EnvStop      = "VDISK_TEST_S3_STOP"
	EnvStart     = "VDISK_TEST_S3_START"
)

// ErrCannotRestart is returned by Stop and Start of an external server
// without VDISK_TEST_S3_STOP and VDISK_TEST_S3_START.
var ErrCannotRestart = errors.New("s3test: the external S3 server has no " + EnvStop + "/" + EnvStart + " hooks: cannot stop or start it")

// Server is a running versitygw, or an external server. Its methods are
// not safe for concurrent use; Stop and Start are meant for fault tests
// that restart it.
type Server struct {
	// Endpoint is the server's URL.
	Endpoint string
	// Bucket exists on the server.
	Bucket string

	region, accessKey, secretKey string

	// versitygw
	bin  string
	addr string
	dir  string
	cmd  *exec.Cmd
	done chan error

	// external mode
	external            bool
	stopHook, startHook string
	stopped             bool
}

var (
	once sync.Once
	// current is the running server, nil when there is none.
	current *Server
	// missing says why there is no server.
	missing error
)

// Main runs m and stops the server if a test started one. Use it as
// `func TestMain(m *testing.M) { os.Exit(s3test.Main(m)) }`.
func Main(m *testing.M) int {
	code := m.Run()
	if current != nil && current.external {
		if current.stopped && current.startHook != "" {
			if err := current.Start(); err != nil {
				fmt.Fprintf(os.Stderr, "s3test: start the external server again: %v\n", err)
			}
		}
	} else if current != nil {
		if err := current.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "s3test: stop: %v\n", err)
		}
		os.RemoveAll(current.dir)
	}
	return code
}

// Need returns the running server, starting it on first use (so fuzz
// workers and tests without S3 start none). Without versitygw it skips t,
// or fails it under CI=true.
func Need(t testing.TB) *Server {
	t.Helper()
	once.Do(func() {
		if os.Getenv(EnvEndpoint) != "" {
			current, missing = external()
		} else {
			current, missing = start()
		}
	})
	if current == nil && os.Getenv(EnvEndpoint) != "" {
		t.Fatalf("external S3 server: %v", missing)
	}
	if current != nil && current.external && current.stopped {
		// A test stopped it and did not start it again (e2e's TestS3
		// stops it when done; -count=2 runs it again).
		if err := current.Start(); err != nil {
			t.Fatalf("start the external S3 server again: %v", err)
		}
	}
	if current == nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no versitygw under CI: %v", missing)
		}
		t.Skipf("no versitygw: %v", missing)
	}
	return current
}

// Config returns the s3.Config reaching the server's bucket.
func (s *Server) Config() s3.Config {
	return s3.Config{
		Bucket: s.Bucket, Endpoint: s.Endpoint, Region: s.region, PathStyle: true,
		AccessKey: s.accessKey, SecretKey: s.secretKey,
		MaxAttempts: 3, MaxBackoff: 200 * time.Millisecond,
	}
}

// Store returns a new s3.Store on the server's bucket.
func (s *Server) Store(t testing.TB) *s3.Store {
	t.Helper()
	st, err := s3.New(context.Background(), s.Config())
	if err != nil {
		t.Fatalf("s3.New: %v", err)
	}
	return st
}

func start() (*Server, error) {
	bin, err := binary()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "vdisk-versitygw-")
	if err != nil {
		return nil, err
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	s := &Server{Endpoint: "http://" + addr, Bucket: bucketName, region: "us-east-1",
		accessKey: accessKey, secretKey: secretKey, bin: bin, addr: addr, dir: dir}
	if err := s.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	st, err := s3.New(ctx, s.Config())
	if err == nil {
		err = st.CreateBucket(ctx)
	}
	if err != nil {
		s.Stop()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("create bucket: %w", err)
	}
	return s, nil
}

// external returns the server the environment names; it makes no
// request (the bucket must exist).
func external() (*Server, error) {
	s := &Server{
		Endpoint: os.Getenv(EnvEndpoint), Bucket: os.Getenv(EnvBucket), region: os.Getenv(EnvRegion),
		accessKey: os.Getenv(EnvAccessKey), secretKey: os.Getenv(EnvSecretKey),
		external: true, stopHook: os.Getenv(EnvStop), startHook: os.Getenv(EnvStart),
	}
	if s.region == "" {
		s.region = "us-east-1"
	}
	if s.Bucket == "" || s.accessKey == "" || s.secretKey == "" {
		return nil, fmt.Errorf("%s is set: set %s, %s and %s too", EnvEndpoint, EnvBucket, EnvAccessKey, EnvSecretKey)
	}
	return s, nil
}

// CanRestart reports whether Stop and Start work: always for versitygw,
// for an external server when it has both hooks.
func (s *Server) CanRestart() bool {
	return !s.external || (s.stopHook != "" && s.startHook != "")
}

// hook runs an external server's stop or start command.
func (s *Server) hook(name, command string) error {
	if !s.CanRestart() {
		return ErrCannotRestart
	}
	ctx, cancel := context.WithTimeout(context.Background(), hookTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "sh", "-c", command).CombinedOutput()
	if err != nil {
		return fmt.Errorf("s3test: %s %q: %v: %s", name, command, err, out)
	}
	return nil
}

// Start starts the server (again) on its address and directory and waits
// until it accepts connections. For an external server it runs
// VDISK_TEST_S3_START.
func (s *Server) Start() error {
	if s.external {
		if !s.stopped {
			return errors.New("s3test: server already running")
		}
		if err := s.hook(EnvStart, s.startHook); err != nil {
			return err
		}
		s.stopped = false
		return nil
	}
	if s.cmd != nil {
		return errors.New("s3test: server already running")
	}
	// --keep-alive: versitygw closes every connection after one request
	// by default, unlike the servers vdisk meets in production.
	cmd := exec.Command(s.bin, "--port", s.addr, "--keep-alive", "posix", s.dir)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+accessKey, "ROOT_SECRET_KEY="+secretKey)
	log, err := os.OpenFile(filepath.Join(os.TempDir(), "vdisk-versitygw.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	s.cmd, s.done = cmd, make(chan error, 1)
	go func() { s.done <- cmd.Wait() }()
	deadline := time.Now().Add(startTimeout)
	for {
		c, err := net.DialTimeout("tcp", s.addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case err := <-s.done:
			s.cmd = nil
			return fmt.Errorf("versitygw exited at start: %v (log in %s)", err, log.Name())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.Stop()
			return fmt.Errorf("versitygw not accepting connections on %s after %v", s.addr, startTimeout)
		}
	}
}

// Stop stops the server and waits for it to exit. For an external server
// it runs VDISK_TEST_S3_STOP.
func (s *Server) Stop() error {
	if s.external {
		if s.stopped {
			return nil
		}
		if err := s.hook(EnvStop, s.stopHook); err != nil {
			return err
		}
		s.stopped = true
		return nil
	}
	if s.cmd == nil {
		return nil
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(stopTimeout):
		s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
	return nil
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// binary finds versitygw or installs it.
func binary() (string, error) {
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	gobin := os.Getenv("GOBIN")
	if gobin == "" {
		out, err := exec.Command("go", "env", "GOPATH").Output()
		if err != nil {
			return "", fmt.Errorf("go env GOPATH: %w", err)
		}
		gobin = filepath.Join(strings.SplitN(strings.TrimSpace(string(out)), string(os.PathListSeparator), 2)[0], "bin")
	}
	p := filepath.Join(gobin, "versitygw")
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), installTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "install", module+"@"+Version)
	cmd.Dir = os.TempDir() // outside this module
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOBIN="+gobin)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go install %s@%s: %v: %s", module, Version, err, out)
	}
	return p, nil
}
