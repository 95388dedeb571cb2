// Package objstoretest holds the conformance suite every objstore.Store
// implementation passes (Run) and Faulty, a Store decorator that injects
// errors and hangs for fault tests of the layers above.
package objstoretest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"vdisk/internal/storage/objstore"
)

// suiteTimeout bounds each conformance test's requests.
const suiteTimeout = 60 * time.Second

// Run runs the conformance suite against the store newStore returns. Each
// subtest works under its own key prefix, so newStore may return the same
// store (one bucket) every time.
func Run(t *testing.T, newStore func(t *testing.T) objstore.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s objstore.Store, p string)
	}{
		{"PutGet", testPutGet},
		{"GetRange", testGetRange},
		{"Missing", testMissing},
		{"Overwrite", testOverwrite},
		{"Delete", testDelete},
		{"List", testList},
		{"ListMany", testListMany},
		{"IfNoneMatch", testIfNoneMatch},
		{"IfMatch", testIfMatch},
		{"ConcurrentCreate", testConcurrentCreate},
		{"EmptyObject", testEmptyObject},
		{"Canceled", testCanceled},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			// Unique per run: a shared bucket keeps objects across runs.
			prefix := fmt.Sprintf("conformance/%d/%s/", time.Now().UnixNano(), strings.ReplaceAll(t.Name(), "/", "_"))
			tc.fn(t, s, prefix)
		})
	}
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), suiteTimeout)
	t.Cleanup(cancel)
	return ctx
}

func mustPut(t *testing.T, s objstore.Store, key string, data []byte) objstore.Info {
	t.Helper()
	in, err := s.Put(ctxFor(t), key, data, objstore.PutOptions{})
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	if in.ETag == "" {
		t.Fatalf("put %s: empty ETag", key)
	}
	return in
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) + seed
	}
	return b
}

func testPutGet(t *testing.T, s objstore.Store, p string) {
	ctx := ctxFor(t)
	data := pattern(100_000, 1)
	pin := mustPut(t, s, p+"a", data)
	got, in, err := s.Get(ctx, p+"a", 0, -1)
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("get returned %d bytes, different from the %d put", len(got), len(data))
	}
	if in.Size != int64(len(data)) || in.ETag != pin.ETag {
		t.Fatalf("get info = %+v, want size %d etag %s", in, len(data), pin.ETag)
	}
	h, err := s.Head(ctx, p+"a")
	if err != nil {
		t.Fatalf("head: %v", err)
	}
	if h.Size != int64(len(data)) || h.ETag != pin.ETag || h.Key != p+"a" {
		t.Fatalf("head = %+v, want key %s size %d etag %s", h, p+"a", len(data), pin.ETag)
	}
}

func testGetRange(t *testing.T, s objstore.Store, p string) {
	ctx := ctxFor(t)
	data := pattern(10_000, 3)
	mustPut(t, s, p+"r", data)
	tests := []struct {
		name   string
		off, n int64
		want   []byte
	}{
		{"head", 0, 10, data[:10]},
		{"middle", 4096, 4096, data[4096:8192]},
		{"tail", 9990, 10, data[9990:]},
		{"past end", 9995, 100, data[9995:]},
		{"to end", 5000, -1, data[5000:]},
		{"at end", 10_000, 10, nil},
		{"beyond end", 20_000, 10, nil},
		{"zero length", 100, 0, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, in, err := s.Get(ctx, p+"r", tc.off, tc.n)
			if err != nil {
				t.Fatalf("get [%d,+%d): %v", tc.off, tc.n, err)
			}
			if !bytes.Equal(got, tc.want) {
				t.Fatalf("get [%d,+%d) = %d bytes, want %d", tc.off, tc.n, len(got), len(tc.want))
			}
			if in.Size != int64(len(data)) {
				t.Fatalf("get [%d,+%d) reports size %d, want %d", tc.off, tc.n, in.Size, len(data))
			}
		})
	}
}

func testMissing(t *testing.T, s objstore.Store, p string) {
	ctx := ctxFor(t)
	if _, _, err := s.Get(ctx, p+"nope", 0, -1); !errors.Is(err, objstore.ErrNotFound) {
		t.Errorf("get missing: %v, want ErrNotFound", err)
	}
	if _, _, err := s.Get(ctx, p+"nope", 10, 10); !errors.Is(err, objstore.ErrNotFound) {
		t.Errorf("ranged get missing: %v, want ErrNotFound", err)
	}
	if _, err := s.Head(ctx, p+"nope"); !errors.Is(err, objstore.ErrNotFound) {
		t.Errorf("head missing: %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, p+"nope"); err != nil {
		t.Errorf("delete missing: %v, want nil", err)
	}
}

func testOverwrite(t *testing.T, s objstore.Store, p string) {
	ctx := ctxFor(t)
	first := mustPut(t, s, p+"o", pattern(5000, 1))
	second := mustPut(t, s, p+"o", pattern(3000, 2))
	if first.ETag == second.ETag {
		t.Fatalf("two different contents have the same ETag %s", first.ETag)
	}
	got, _, err := s.Get(ctx, p+"o", 0, -1)
	if err != nil || !bytes.Equal(got, pattern(3000, 2)) {
		t.Fatalf("get after overwrite: %d bytes, %v; want the second content", len(got), err)
	}
}

func testDelete(t *testing.T, s objstore.Store, p string) {
	ctx := ctxFor(t)
	mustPut(t, s, p+"d", []byte("x"))
	if err := s.Delete(ctx, p+"d"); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := s.Head(ctx, p+"d"); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("head after delete: %v, want ErrNotFound", err)
	}
	n := 0
	if err := s.List(ctx, p, func(objstore.Info) error { n++; return nil }); err != nil || n != 0 {
		t.Fatalf("list after delete: %d objects, %v; want none", n, err)
	}
}

func list(t *testing.T, s objstore.Store, prefix string) []objstore.Info {
	t.Helper()
	var got []objstore.Info
	if err := s.List(ctxFor(t), prefix, func(in objstore.Info) error { got = append(got, in); return nil }); err != nil {
		t.Fatalf("list %s: %v", prefix, err)
	}
	return got
}

func testList(t *testing.T, s objstore.Store, p string) {
	keys := []string{"b/2", "a", "b/1", "b/10", "c/x/y", "bb"}
	for i, k := range keys {
		mustPut(t, s, p+k, pattern(i+1, byte(i)))
	}
	mustPut(t, s, strings.TrimSuffix(p, "/")+"-sibling", []byte("not listed"))
	tests := []struct {
		prefix string
		want   []string
	}{
		{"", []string{"a", "b/1", "b/10", "b/2", "bb", "c/x/y"}},
		{"b/", []string{"b/1", "b/10", "b/2"}},
		{"b", []string{"b/1", "b/10", "b/2", "bb"}},
		{"c/", []string{"c/x/y"}},
		{"zzz", nil},
	}
	for _, tc := range tests {
		t.Run("prefix="+tc.prefix, func(t *testing.T) {
			var got []string
			for _, in := range list(t, s, p+tc.prefix) {
				got = append(got, strings.TrimPrefix(in.Key, p))
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("list %q = %v, want %v", tc.prefix, got, tc.want)
			}
		})
	}
	for i, in := range list(t, s, p+"a") {
		if in.Size != 2 || in.ETag == "" { // "a" is keys[1]: 2 bytes
			t.Fatalf("list entry %d = %+v, want size 2 and an ETag", i, in)
		}
	}
	stop := errors.New("stop")
	n := 0
	err := s.List(ctxFor(t), p, func(objstore.Info) error { n++; return stop })
	if !errors.Is(err, stop) || n != 1 {
		t.Fatalf("list stopped by fn: %d calls, %v; want 1 call and fn's error", n, err)
	}
}

// listManyKeys is more than one page of an S3 listing (1000 keys).
const listManyKeys = 1010

func testListMany(t *testing.T, s objstore.Store, p string) {
	ctx := ctxFor(t)
	var wg sync.WaitGroup
	errs := make(chan error, listManyKeys)
	sem := make(chan struct{}, 16)
	for i := range listManyKeys {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if _, err := s.Put(ctx, fmt.Sprintf("%s%05d", p, i), []byte{byte(i)}, objstore.PutOptions{}); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("put: %v", err)
	}
	got := list(t, s, p)
	if len(got) != listManyKeys {
		t.Fatalf("list found %d keys, want %d", len(got), listManyKeys)
	}
	for i, in := range got {
		if want := fmt.Sprintf("%s%05d", p, i); in.Key != want {
			t.Fatalf("list entry %d is %s, want %s", i, in.Key, want)
		}
	}
}

func testIfNoneMatch(t *testing.T, s objstore.Store, p string) {
	ctx := ctxFor(t)
	in, err := s.Put(ctx, p+"n", []byte("one"), objstore.PutOptions{IfNoneMatch: true})
	if err != nil {
		t.Fatalf("create with IfNoneMatch: %v", err)
	}
	if _, err := s.Put(ctx, p+"n", []byte("two"), objstore.PutOptions{IfNoneMatch: true}); !errors.Is(err, objstore.ErrPreconditionFailed) {
		t.Fatalf("second create with IfNoneMatch: %v, want ErrPreconditionFailed", err)
	}
	got, cur, err := s.Get(ctx, p+"n", 0, -1)
	if err != nil || string(got) != "one" || cur.ETag != in.ETag {
		t.Fatalf("after refused create: %q %+v %v, want the first content", got, cur, err)
	}
	if _, err := s.Put(ctx, p+"n", nil, objstore.PutOptions{IfNoneMatch: true, IfMatch: in.ETag}); !errors.Is(err, objstore.ErrInvalidOptions) {
		t.Fatalf("put with both conditions: %v, want ErrInvalidOptions", err)
	}
}

func testIfMatch(t *testing.T, s objstore.Store, p string) {
	ctx := ctxFor(t)
	first := mustPut(t, s, p+"m", []byte("v1"))
	second, err := s.Put(ctx, p+"m", []byte("v2"), objstore.PutOptions{IfMatch: first.ETag})
	if err != nil {
		t.Fatalf("put IfMatch current etag: %v", err)
	}
	if _, err := s.Put(ctx, p+"m", []byte("v3"), objstore.PutOptions{IfMatch: first.ETag}); !errors.Is(err, objstore.ErrPreconditionFailed) {
		t.Fatalf("put IfMatch stale etag: %v, want ErrPreconditionFailed", err)
	}
	got, in, err := s.Get(ctx, p+"m", 0, -1)
	if err != nil || string(got) != "v2" || in.ETag != second.ETag {
		t.Fatalf("after refused put: %q %+v %v, want v2 with etag %s", got, in, err, second.ETag)
	}
	if _, err := s.Put(ctx, p+"missing", []byte("x"), objstore.PutOptions{IfMatch: first.ETag}); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("put IfMatch on a missing object: %v, want ErrNotFound", err)
	}
}

// concurrentCreators race to create one object.
const concurrentCreators = 8

func testConcurrentCreate(t *testing.T, s objstore.Store, p string) {
	ctx := ctxFor(t)
	var wg sync.WaitGroup
	results := make([]error, concurrentCreators)
	for i := range concurrentCreators {
		wg.Go(func() {
			_, results[i] = s.Put(ctx, p+"race", fmt.Appendf(nil, "creator %d", i), objstore.PutOptions{IfNoneMatch: true})
		})
	}
	wg.Wait()
	winner := -1
	for i, err := range results {
		switch {
		case err == nil && winner >= 0:
			t.Fatalf("creators %d and %d both created the object", winner, i)
		case err == nil:
			winner = i
		case !errors.Is(err, objstore.ErrPreconditionFailed):
			t.Fatalf("creator %d: %v, want ErrPreconditionFailed", i, err)
		}
	}
	if winner < 0 {
		t.Fatalf("no creator won: %v", results)
	}
	got, _, err := s.Get(ctx, p+"race", 0, -1)
	if err != nil || string(got) != fmt.Sprintf("creator %d", winner) {
		t.Fatalf("object holds %q (%v), want the winner's content", got, err)
	}
}

func testEmptyObject(t *testing.T, s objstore.Store, p string) {
	ctx := ctxFor(t)
	mustPut(t, s, p+"e", nil)
	got, in, err := s.Get(ctx, p+"e", 0, -1)
	if err != nil || len(got) != 0 || in.Size != 0 {
		t.Fatalf("get empty object: %d bytes, %+v, %v", len(got), in, err)
	}
}

func testCanceled(t *testing.T, s objstore.Store, p string) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Put(ctx, p+"c", []byte("x"), objstore.PutOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("put with a canceled context: %v, want context.Canceled", err)
	}
	if _, _, err := s.Get(ctx, p+"c", 0, -1); !errors.Is(err, context.Canceled) {
		t.Fatalf("get with a canceled context: %v, want context.Canceled", err)
	}
}
