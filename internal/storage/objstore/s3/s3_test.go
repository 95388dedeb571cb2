package s3_test

import (
	"context"
	"errors"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"vdisk/internal/storage/objstore"
	"vdisk/internal/storage/objstore/objstoretest"
	"vdisk/internal/storage/objstore/s3"
	"vdisk/internal/storage/objstore/s3/s3test"
)

func TestMain(m *testing.M) { os.Exit(s3test.Main(m)) }

func TestConformance(t *testing.T) {
	srv := s3test.Need(t)
	objstoretest.Run(t, func(t *testing.T) objstore.Store { return srv.Store(t) })
}

// TestUnreachable proves a dead endpoint fails within the retry bound with
// an error, not a hang.
func TestUnreachable(t *testing.T) {
	srv := s3test.Need(t)
	cfg := srv.Config()
	cfg.Endpoint = "http://127.0.0.1:1" // nothing listens on port 1
	cfg.MaxAttempts = 3
	cfg.MaxBackoff = 10 * time.Millisecond
	var retries atomic.Int64
	cfg.OnRetry = func() { retries.Add(1) }
	st, err := s3.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = st.Put(ctx, "x", []byte("x"), objstore.PutOptions{})
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("put to a dead endpoint: %v, want a connection error before the deadline", err)
	}
	if got := retries.Load(); got != 2 {
		t.Errorf("OnRetry heard %d retries of a put with 3 attempts, want 2", got)
	}
}

// TestRestart proves the store works again after the server restarts.
func TestRestart(t *testing.T) {
	srv := s3test.Need(t)
	st := srv.Store(t)
	ctx := context.Background()
	if _, err := st.Put(ctx, "restart/a", []byte("before"), objstore.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	_, _, err := st.Get(ctx, "restart/a", 0, -1)
	if err == nil {
		t.Fatal("get from a stopped server succeeded")
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	got, _, err := st.Get(ctx, "restart/a", 0, -1)
	if err != nil || string(got) != "before" {
		t.Fatalf("get after restart: %q, %v", got, err)
	}
}

// TestGetInto reads ranges into the caller's buffer like Get.
func TestGetInto(t *testing.T) {
	st := s3test.Need(t).Store(t)
	ctx := context.Background()
	data := []byte("0123456789abcdef")
	if _, err := st.Put(ctx, "getinto", data, objstore.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 8)
	n, in, err := objstore.GetInto(ctx, st, "getinto", 4, p)
	if err != nil || n != 8 || string(p) != "456789ab" || in.Size != int64(len(data)) {
		t.Fatalf("GetInto(4, 8) = %d %q %+v %v", n, p[:n], in, err)
	}
	n, _, err = objstore.GetInto(ctx, st, "getinto", 12, p)
	if err != nil || n != 4 || string(p[:n]) != "cdef" {
		t.Fatalf("GetInto(12, 8) = %d %q %v, want the 4 bytes to the end", n, p[:n], err)
	}
	if _, _, err := objstore.GetInto(ctx, st, "missing", 0, p); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("GetInto of a missing object: %v, want ErrNotFound", err)
	}
}
