package daemon

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"vdisk/internal/api"
	"vdisk/internal/client"
)

// bound is how long a test waits for what must happen before it fails
// instead of hanging. It says nothing of how fast anything is.
const bound = time.Minute

// muteStore is an object store endpoint that accepts connections, reads
// the requests and never answers: an open against it is stuck until it
// is cancelled.
type muteStore struct {
	url string
	// accepted receives one value per connection a request arrived on;
	// taken counts those the test took.
	accepted chan struct{}
	taken    int
	mu       sync.Mutex
	// done has a channel per connection a request arrived on, closed when
	// its client closed the connection. (A connection dialed for a request
	// cancelled meanwhile carries none; the client's transport keeps it
	// idle for a while.)
	done []chan struct{}
}

func startMuteStore(t *testing.T) *muteStore {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := &muteStore{url: "http://" + ln.Addr().String(), accepted: make(chan struct{}, 1024)}
	var wg sync.WaitGroup
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			m.mu.Lock()
			conns = append(conns, c)
			m.mu.Unlock()
			wg.Go(func() {
				if n, _ := c.Read(make([]byte, 1)); n == 0 {
					return
				}
				done := make(chan struct{})
				m.mu.Lock()
				m.done = append(m.done, done)
				m.mu.Unlock()
				m.accepted <- struct{}{}
				io.Copy(io.Discard, c) //nolint:errcheck // until the client hangs up
				close(done)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		m.mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		m.mu.Unlock()
		wg.Wait()
	})
	return m
}

// waitAccepted waits for a request to arrive on the nth connection (from
// 1).
func (m *muteStore) waitAccepted(t *testing.T, n int, also <-chan error) {
	t.Helper()
	for ; m.taken < n; m.taken++ {
		select {
		case <-m.accepted:
		case err := <-also:
			t.Fatalf("the stuck open returned before it reached the store: %v", err)
		case <-time.After(bound):
			t.Fatalf("no request reached the store after %v", bound)
		}
	}
}

// count counts the connections requests arrived on so far.
func (m *muteStore) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.done)
}

// waitAllClosed waits for every connection a request arrived on so far to
// be closed by its client: the request was abandoned.
func (m *muteStore) waitAllClosed(t *testing.T) {
	t.Helper()
	m.mu.Lock()
	done := append([]chan struct{}(nil), m.done...)
	m.mu.Unlock()
	for i, d := range done {
		select {
		case <-d:
		case <-time.After(bound):
			t.Fatalf("connection %d to the store still open %v after its client hung up", i, bound)
		}
	}
}

// s3Env gives the in-process daemon credentials for the object store and
// keeps the AWS SDK from looking elsewhere (files, instance metadata).
func s3Env(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("AWS_ACCESS_KEY_ID", "test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "test")
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "credentials"))
	t.Setenv("AWS_PROFILE", "")
}

// stuckOpen opens url against the mute store from a client of its own in
// the background; hangUp cancels it, and its error arrives on the channel.
func stuckOpen(td *testDaemon, m *muteStore, url string) (hangUp context.CancelFunc, errc chan error) {
	ctx, hangUp := context.WithCancel(context.Background())
	errc = make(chan error, 1)
	c := client.New(td.socket)
	go func() {
		defer c.Close()
		_, err := c.Open(ctx, api.OpenRequest{File: url, S3: &api.S3Options{Endpoint: m.url}})
		errc <- err
	}()
	return hangUp, errc
}

// waitErr waits for a background call's error.
func waitErr(t *testing.T, errc <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-errc:
		return err
	case <-time.After(bound):
		t.Fatalf("%s: no answer after %v", what, bound)
		return nil
	}
}

// TestStuckOpenBlocksNothing: while an open is stuck on an object store
// that never answers, list, info, inspect, and the open and close of
// another image answer; a second open and a close of the stuck image
// wait for it; the client hanging up cancels it (its connections to the
// store close), after which the waiting requests go on.
func TestStuckOpenBlocksNothing(t *testing.T) {
	needKernel(t)
	s3Env(t)
	m := startMuteStore(t)
	// The daemon's own deadline is far beyond the test's bound: only the
	// hang-up can end the stuck open in time.
	td := startDaemonWith(t, "", nil, func(o *Options) { o.OpenTimeout = time.Hour })
	url := "s3://bucket/stuck"
	id := api.DiskID(url)
	hangUpA, errA := stuckOpen(td, m, url)
	m.waitAccepted(t, 1, errA)

	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	if l, err := td.c.List(ctx); err != nil || len(l) != 0 {
		t.Fatalf("list while an open is stuck: %+v, %v", l, err)
	}
	other := filepath.Join(td.dir, "other.img")
	d, err := td.c.Open(ctx, api.OpenRequest{File: other, Create: true, Size: 1 << 20})
	if err != nil {
		t.Fatalf("open another image while an open is stuck: %v", err)
	}
	if g, err := td.c.Disk(ctx, d.ID); err != nil || g.Device != d.Device {
		t.Fatalf("info while an open is stuck: %+v, %v", g, err)
	}
	if im, err := td.c.Inspect(ctx, api.InspectRequest{File: other}); err != nil || !im.Open {
		t.Fatalf("inspect while an open is stuck: %+v, %v", im, err)
	}
	if l, err := td.c.List(ctx); err != nil || len(l) != 1 || l[0].ID != d.ID {
		t.Fatalf("list: %+v, %v", l, err)
	}
	if _, err := td.c.CloseDisk(ctx, d.ID, false); err != nil {
		t.Fatalf("close another disk while an open is stuck: %v", err)
	}

	// A second open of the same image, and a close of it, wait for the
	// first: they are counted on its lock, and no second request reaches
	// the store.
	hangUpC, errC := stuckOpen(td, m, url)
	defer hangUpC()
	errD := make(chan error, 1)
	go func() {
		_, err := td.c.CloseDisk(ctx, id, false)
		errD <- err
	}()
	waitWaiters(t, td.d, id, 3)
	if n := m.count(); n != 1 {
		t.Fatalf("%d connections reached the store while the first open held the image", n)
	}

	// The first client hangs up: its open is cancelled, and the requests
	// waiting for the image go on. The second open reaches the store
	// (unless the close went first, it is then the only one waiting).
	hangUpA()
	if err := waitErr(t, errA, "the hung-up open"); !errors.Is(err, context.Canceled) {
		t.Fatalf("hung-up open: %v, want context.Canceled", err)
	}
	m.waitAccepted(t, 2, errC)
	hangUpC()
	if err := waitErr(t, errC, "the second hung-up open"); !errors.Is(err, context.Canceled) {
		t.Fatalf("second hung-up open: %v, want context.Canceled", err)
	}
	wantCode(t, waitErr(t, errD, "the close of the stuck image"), api.CodeNotFound)
	m.waitAllClosed(t)
	if l, err := td.c.List(ctx); err != nil || len(l) != 0 {
		t.Fatalf("list after the cancelled opens: %+v, %v", l, err)
	}
}

// waitWaiters waits until n operations hold or wait for the lock of the
// image id.
func waitWaiters(t *testing.T, d *Daemon, id string, n int) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		d.mu.Lock()
		refs := 0
		if l := d.locks[id]; l != nil {
			refs = l.refs
		}
		d.mu.Unlock()
		if refs == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d operations on the lock of %s after %v, want %d", refs, id, bound, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestOpenTimeout: an open, and an inspection, of an image whose store
// never answers fail after the daemon's open timeout with CodeTimeout, and
// leave nothing behind. Needs no kernel device: the open never gets there.
func TestOpenTimeout(t *testing.T) {
	s3Env(t)
	m := startMuteStore(t)
	td := startDaemonWith(t, "", nil, func(o *Options) { o.OpenTimeout = 100 * time.Millisecond })
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	url := "s3://bucket/mute"
	_, err := td.c.Open(ctx, api.OpenRequest{File: url, S3: &api.S3Options{Endpoint: m.url}})
	e := wantCode(t, err, api.CodeTimeout)
	t.Log(e.Message)
	_, err = td.c.Inspect(ctx, api.InspectRequest{File: url, S3: &api.S3Options{Endpoint: m.url}})
	wantCode(t, err, api.CodeTimeout)
	if l, err := td.c.List(ctx); err != nil || len(l) != 0 {
		t.Fatalf("list: %+v, %v", l, err)
	}
	m.waitAllClosed(t)
	td.d.mu.Lock()
	locks := len(td.d.locks)
	td.d.mu.Unlock()
	if locks != 0 {
		t.Fatalf("%d image locks left", locks)
	}
}

// TestShutdownCancelsStuckOpen: stopping the daemon while an open is
// stuck cancels it, and the daemon stops.
func TestShutdownCancelsStuckOpen(t *testing.T) {
	s3Env(t)
	m := startMuteStore(t)
	td := startDaemonWith(t, "", nil, func(o *Options) { o.OpenTimeout = time.Hour })
	hangUp, errA := stuckOpen(td, m, "s3://bucket/stuck")
	defer hangUp()
	m.waitAccepted(t, 1, errA)
	stopped := make(chan struct{})
	go func() {
		td.stop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(bound):
		t.Fatalf("the daemon did not stop within %v while an open was stuck", bound)
	}
	// The open's client hears the daemon is shutting down (or, had the
	// server closed first, that the connection went away).
	if err := waitErr(t, errA, "the stuck open"); err == nil {
		t.Fatal("the stuck open succeeded")
	} else if !errors.Is(err, &api.Error{Code: api.CodeShuttingDown}) {
		t.Logf("stuck open: %v", err)
	}
	m.waitAllClosed(t)
	// Nothing is left in the state file.
	if sds, err := loadState(td.stateDir); err != nil || len(sds) != 0 {
		t.Fatalf("state after shutdown: %+v, %v", sds, err)
	}
}

// TestImageLock: operations on one image take turns; on another image
// they do not wait; a waiter whose context ends gives up.
func TestImageLock(t *testing.T) {
	d, err := New(Options{Socket: filepath.Join(t.TempDir(), "s"), StateDir: t.TempDir(), Logger: logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	unlockA, err := d.lockImage(ctx, "a", "/a")
	if err != nil {
		t.Fatal(err)
	}
	// Another image's lock is free.
	unlockB, err := d.lockImage(ctx, "b", "/b")
	if err != nil {
		t.Fatal(err)
	}
	unlockB()
	// A waiter whose context ends gives up, with the cause.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := d.lockImage(cctx, "a", "/a"); !errors.Is(err, context.Canceled) {
		t.Fatalf("lock with a cancelled context: %v", err)
	}
	tctx, tcancel := context.WithTimeoutCause(ctx, time.Millisecond, errOpenTimeout)
	defer tcancel()
	if _, err := d.lockImage(tctx, "a", "/a"); !errors.Is(err, &api.Error{Code: api.CodeTimeout}) {
		t.Fatalf("lock past the deadline: %v", err)
	}
	// A second taker gets the lock only once the first lets go.
	var mu sync.Mutex
	released := false
	got := make(chan bool, 1)
	go func() {
		unlock, err := d.lockImage(ctx, "a", "/a")
		if err != nil {
			t.Error(err)
			got <- false
			return
		}
		mu.Lock()
		got <- released
		mu.Unlock()
		unlock()
	}()
	waitWaiters(t, d, "a", 2)
	mu.Lock()
	released = true
	mu.Unlock()
	unlockA()
	select {
	case ok := <-got:
		if !ok {
			t.Fatal("the second taker got the lock while the first held it")
		}
	case <-time.After(bound):
		t.Fatal("the second taker never got the lock")
	}
	waitWaiters(t, d, "a", 0)
	d.mu.Lock()
	n := len(d.locks)
	d.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d locks left", n)
	}
}
