package chunked

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"vdisk/internal/blockdev"
	"vdisk/internal/storage/objstore"
	"vdisk/internal/storage/objstore/s3/s3test"
)

func TestMain(m *testing.M) { os.Exit(s3test.Main(m)) }

// testChunk keeps tests quick.
const testChunk = 64 << 10

// testLeaseTTL keeps takeovers (which watch the holder's lease for its
// TTL) quick.
const testLeaseTTL = 3 * time.Second

// backend is a store under test: memory or versitygw.
type backend struct {
	name  string
	store func(t *testing.T) objstore.Store
}

func backends() []backend {
	return []backend{
		{"mem", func(t *testing.T) objstore.Store { return objstore.NewMem() }},
		{"versitygw", func(t *testing.T) objstore.Store { return s3test.Need(t).Store(t) }},
	}
}

var prefixSeq atomic.Int64

// newPrefix is a fresh image prefix, unique in the shared bucket.
func newPrefix(t *testing.T) string {
	return fmt.Sprintf("test/%d-%d", time.Now().UnixNano(), prefixSeq.Add(1))
}

func testOpts() Options {
	return Options{LeaseHolder: "test-writer", MaxDirty: 8 * testChunk, CacheSize: 8 * testChunk, Parallel: 4, RequestTimeout: 30 * time.Second, LeaseTTL: testLeaseTTL}
}

// create makes an image and opens it.
func create(t *testing.T, st objstore.Store, prefix string, size int64, opts Options) *Device {
	t.Helper()
	if _, err := Create(context.Background(), st, prefix, size, CreateOptions{ChunkSize: testChunk}); err != nil {
		t.Fatalf("Create: %v", err)
	}
	return open(t, st, prefix, opts)
}

func open(t *testing.T, st objstore.Store, prefix string, opts Options) *Device {
	t.Helper()
	d, err := Open(context.Background(), st, prefix, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func pattern(n int, seed int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31+seed*7) | 1
	}
	return b
}

func mustWrite(t *testing.T, d blockdev.Device, p []byte, off int64) {
	t.Helper()
	if _, err := d.WriteAt(p, off); err != nil {
		t.Fatalf("WriteAt(%d bytes at %d): %v", len(p), off, err)
	}
}

func readAll(t *testing.T, d blockdev.Device) []byte {
	t.Helper()
	b := make([]byte, d.Size())
	if _, err := d.ReadAt(b, 0); err != nil {
		t.Fatalf("ReadAt: %v", err)
	}
	return b
}

// chunkKeys lists, in order, the chunk numbers whose committed object a
// reader takes holds data (not a tombstone).
func chunkKeys(t *testing.T, st objstore.Store, prefix string) []int64 {
	t.Helper()
	kp := keyPrefix(prefix)
	f, _, err := readManifest(context.Background(), st, kp, prefix)
	if errors.Is(err, ErrNoImage) {
		f = manifestFile{Manifest: Manifest{Size: MaxSize, ChunkSize: MinChunkSize}}
	} else if err != nil {
		t.Fatal(err)
	}
	vw, err := scan(context.Background(), st, kp, f, -1)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	var out []int64
	for idx, o := range vw.objs {
		if o.size > 0 {
			out = append(out, idx)
		}
	}
	slices.Sort(out)
	return out
}

// objectKeys lists every chunk object under prefix, of any version.
func objectKeys(t *testing.T, st objstore.Store, prefix string) []string {
	t.Helper()
	var out []string
	kp := keyPrefix(prefix)
	err := st.List(context.Background(), kp, func(in objstore.Info) error {
		if _, _, ok := parseObjKey(kp, in.Key); ok {
			out = append(out, in.Key)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	return out
}

// later is a clock offset past every lease taken now.
func later(ttl time.Duration) time.Duration { return ttl + time.Minute }
