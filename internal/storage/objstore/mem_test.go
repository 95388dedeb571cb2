package objstore_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"

	"vdisk/internal/storage/objstore"
	"vdisk/internal/storage/objstore/objstoretest"
)

func TestMemConformance(t *testing.T) {
	objstoretest.Run(t, func(t *testing.T) objstore.Store { return objstore.NewMem() })
}

func TestDecoratorsConformance(t *testing.T) {
	objstoretest.Run(t, func(t *testing.T) objstore.Store {
		log := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelDebug}))
		return objstore.NewCounter(objstore.NewLogged(objstoretest.NewFaulty(objstore.NewMem()), log))
	})
}

func TestCounter(t *testing.T) {
	ctx := context.Background()
	c := objstore.NewCounter(objstore.NewMem())
	if _, err := c.Put(ctx, "a", make([]byte, 100), objstore.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Get(ctx, "a", 10, 20); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Get(ctx, "missing", 0, -1); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatal(err)
	}
	if _, err := c.Head(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := c.List(ctx, "", func(objstore.Info) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	want := objstore.Counts{Get: 2, Put: 1, Delete: 1, List: 1, Head: 1, BytesRead: 20, BytesWritten: 100, Errors: 1}
	if got := c.Counts(); got != want {
		t.Fatalf("counts = %+v, want %+v", got, want)
	}
	if got := c.Counts().Requests(); got != 6 {
		t.Fatalf("requests = %d, want 6", got)
	}
	if got := c.Counts().Sub(objstore.Counts{Get: 1, BytesRead: 5}); got.Get != 1 || got.BytesRead != 15 {
		t.Fatalf("sub = %+v", got)
	}
}

func TestLoggedLogs(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	l := objstore.NewLogged(objstore.NewMem(), log)
	if _, err := l.Put(context.Background(), "k1", []byte("abc"), objstore.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Head(context.Background(), "nope"); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"objstore put", "key=k1", "bytes=3", "level=WARN", "objstore head", "object not found"} {
		if !bytes.Contains([]byte(out), []byte(want)) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}

func TestFaulty(t *testing.T) {
	ctx := context.Background()
	f := objstoretest.NewFaulty(objstore.NewMem())
	f.SetFault(objstoretest.FailAll(objstoretest.OpPut))
	if _, err := f.Put(ctx, "a", nil, objstore.PutOptions{}); !errors.Is(err, objstoretest.ErrInjected) {
		t.Fatalf("put: %v, want ErrInjected", err)
	}
	if _, err := f.Head(ctx, "a"); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("head passes through: %v", err)
	}
	f.SetFault(func(objstoretest.Op, string) error { return objstoretest.ErrHang })
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := f.Head(cctx, "a"); !errors.Is(err, context.Canceled) {
		t.Fatalf("hung head: %v, want context.Canceled", err)
	}
	f.SetFault(nil)
	if _, err := f.Put(ctx, "a", nil, objstore.PutOptions{}); err != nil {
		t.Fatalf("put after faults cleared: %v", err)
	}
}
