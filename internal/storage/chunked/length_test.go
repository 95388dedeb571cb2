package chunked

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/storage/objstore"
)

// A format's file grows with SetLength; Flush stores the length after the
// chunks, and a reopen (and Stat) sees it with the data.
func TestLength(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			ctx := context.Background()
			st, prefix := b.store(t), newPrefix(t)
			if _, err := Create(ctx, st, prefix, 16*testChunk, CreateOptions{ChunkSize: testChunk, ImageFormat: "qcow2"}); err != nil {
				t.Fatalf("Create: %v", err)
			}
			d := open(t, st, prefix, testOpts())
			if n := d.Length(); n != 0 {
				t.Fatalf("new image's length %d, want 0", n)
			}
			data := pattern(3*testChunk/2, 1)
			if err := d.SetLength(int64(len(data))); err != nil {
				t.Fatalf("SetLength: %v", err)
			}
			mustWrite(t, d, data, 0)
			if err := d.SetLength(16*testChunk + 1); !errors.Is(err, blockdev.ErrNoSpace) {
				t.Fatalf("SetLength past the capacity: %v, want ErrNoSpace", err)
			}
			if m, err := Stat(ctx, st, prefix); err != nil || m.Length != 0 {
				t.Fatalf("before Flush the stored length is %d (%v), want 0", m.Length, err)
			}
			if err := d.Flush(); err != nil {
				t.Fatalf("Flush: %v", err)
			}
			m, err := Stat(ctx, st, prefix)
			if err != nil || m.Length != int64(len(data)) || m.ImageFormat != "qcow2" {
				t.Fatalf("Stat after Flush: %+v, %v", m, err)
			}
			if err := d.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			d = open(t, st, prefix, testOpts())
			if n := d.Length(); n != int64(len(data)) {
				t.Fatalf("reopened length %d, want %d", n, len(data))
			}
			got := make([]byte, len(data))
			if _, err := d.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("reopened data differs (%v)", err)
			}
		})
	}
}

func TestLengthRefused(t *testing.T) {
	ctx := context.Background()
	st := objstore.NewMem()
	d := create(t, st, newPrefix(t), 4*testChunk, testOpts())
	if err := d.SetLength(testChunk); !errors.Is(err, blockdev.ErrNotSupported) {
		t.Fatalf("SetLength of a raw image: %v, want ErrNotSupported", err)
	}
	prefix := newPrefix(t)
	if _, err := Create(ctx, st, prefix, 4*testChunk, CreateOptions{ChunkSize: testChunk, ImageFormat: "qcow2"}); err != nil {
		t.Fatalf("Create: %v", err)
	}
	ro := open(t, st, prefix, Options{ReadOnly: true})
	if err := ro.SetLength(testChunk); !errors.Is(err, blockdev.ErrReadOnly) {
		t.Fatalf("SetLength on a read-only open: %v, want ErrReadOnly", err)
	}
}

func TestRemove(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			ctx := context.Background()
			st, prefix := b.store(t), newPrefix(t)
			d := create(t, st, prefix, 4*testChunk, testOpts())
			mustWrite(t, d, pattern(2*testChunk, 2), 0)
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			stranger := keyPrefix(prefix) + "notes.txt"
			if _, err := st.Put(ctx, stranger, []byte("keep"), objstore.PutOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := Remove(ctx, st, prefix); err != nil {
				t.Fatalf("Remove: %v", err)
			}
			if _, err := Stat(ctx, st, prefix); !errors.Is(err, ErrNoImage) {
				t.Fatalf("Stat after Remove: %v, want ErrNoImage", err)
			}
			if k := chunkKeys(t, st, prefix); len(k) != 0 {
				t.Fatalf("chunks left after Remove: %v", k)
			}
			if _, _, err := st.Get(ctx, stranger, 0, 10); err != nil {
				t.Fatalf("Remove took an object that was not the image's: %v", err)
			}
		})
	}
}

func TestInspect(t *testing.T) {
	ctx := context.Background()
	st, prefix := objstore.NewMem(), newPrefix(t)
	d := create(t, st, prefix, 8*testChunk, testOpts())
	mustWrite(t, d, pattern(testChunk+1, 3), testChunk) // chunks 1 and 2
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	r, err := Inspect(ctx, st, prefix)
	if err != nil {
		t.Fatalf("Inspect: %v", err)
	}
	if r.Chunks != 2 || r.StoredBytes != 2*testChunk || r.Holder != "test-writer" || r.Expires.IsZero() || r.Manifest.Size != 8*testChunk {
		t.Fatalf("Inspect of an open image: %+v", r)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if r, err = Inspect(ctx, st, prefix); err != nil || r.Holder != "" {
		t.Fatalf("Inspect after Close: %+v, %v; want no holder", r, err)
	}
	if _, err := Inspect(ctx, st, "nothing/here"); !errors.Is(err, ErrNoImage) {
		t.Fatalf("Inspect of no image: %v, want ErrNoImage", err)
	}
}

func TestDelete(t *testing.T) {
	ctx := context.Background()
	st, prefix := objstore.NewMem(), newPrefix(t)
	d := create(t, st, prefix, 4*testChunk, testOpts())
	mustWrite(t, d, pattern(testChunk, 4), 0)
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	var le *LeaseError
	if err := Delete(ctx, st, prefix, AdminOptions{}); !errors.As(err, &le) || le.Holder != "test-writer" {
		t.Fatalf("Delete of an open image: %v, want a LeaseError naming test-writer", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := Delete(ctx, st, prefix, AdminOptions{}); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := Stat(ctx, st, prefix); !errors.Is(err, ErrNoImage) {
		t.Fatalf("Stat after Delete: %v", err)
	}
	if k := chunkKeys(t, st, prefix); len(k) != 0 {
		t.Fatalf("chunks after Delete: %v", k)
	}
	if err := Delete(ctx, st, prefix, AdminOptions{}); !errors.Is(err, ErrNoImage) {
		t.Fatalf("Delete of nothing: %v, want ErrNoImage", err)
	}
}

// Resize grows and shrinks a raw image whose size is not a whole number
// of chunks: the data below the smaller size stays, what grows reads as
// zeroes, and bytes dropped by a shrink never come back with a grow.
func TestResize(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			ctx := context.Background()
			st, prefix := b.store(t), newPrefix(t)
			size := int64(2*testChunk + testChunk/2)
			d := create(t, st, prefix, size, testOpts())
			data := pattern(int(size), 5)
			mustWrite(t, d, data, 0)
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			check := func(want []byte) {
				t.Helper()
				d := open(t, st, prefix, Options{ReadOnly: true})
				if d.Size() != int64(len(want)) {
					t.Fatalf("size %d, want %d", d.Size(), len(want))
				}
				if got := readAll(t, d); !bytes.Equal(got, want) {
					t.Fatalf("contents differ from the model at %d", firstDiff(got, want))
				}
				d.Close()
			}
			// Grow: the short last chunk is padded.
			if old, err := Resize(ctx, st, prefix, 4*testChunk, AdminOptions{}); err != nil || old != size {
				t.Fatalf("grow: %d, %v", old, err)
			}
			check(append(append([]byte{}, data...), make([]byte, 4*testChunk-size)...))
			// Shrink into the middle of chunk 1: chunks 2 and 3 go.
			small := int64(testChunk + 100)
			if _, err := Resize(ctx, st, prefix, small, AdminOptions{}); err != nil {
				t.Fatalf("shrink: %v", err)
			}
			check(data[:small])
			if k := chunkKeys(t, st, prefix); len(k) != 2 {
				t.Fatalf("chunks after the shrink: %v, want 0 and 1", k)
			}
			// Grow again: what the shrink dropped reads as zeroes.
			if _, err := Resize(ctx, st, prefix, size, AdminOptions{}); err != nil {
				t.Fatalf("grow again: %v", err)
			}
			check(append(append([]byte{}, data[:small]...), make([]byte, size-small)...))
			// Refused while a writer holds the image.
			w := open(t, st, prefix, testOpts())
			var le *LeaseError
			if _, err := Resize(ctx, st, prefix, 8*testChunk, AdminOptions{}); !errors.As(err, &le) {
				t.Fatalf("resize of an open image: %v, want a LeaseError", err)
			}
			w.Close()
		})
	}
}

func TestResizeFormatCapacity(t *testing.T) {
	ctx := context.Background()
	st, prefix := objstore.NewMem(), newPrefix(t)
	if _, err := Create(ctx, st, prefix, 4*testChunk, CreateOptions{ChunkSize: testChunk, ImageFormat: "qcow2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := Resize(ctx, st, prefix, 2*testChunk, AdminOptions{}); !errors.Is(err, blockdev.ErrNotSupported) {
		t.Fatalf("shrinking a format's capacity: %v, want ErrNotSupported", err)
	}
	if _, err := Resize(ctx, st, prefix, 16*testChunk, AdminOptions{}); err != nil {
		t.Fatal(err)
	}
	if m, err := Stat(ctx, st, prefix); err != nil || m.Size != 16*testChunk || m.ImageFormat != "qcow2" {
		t.Fatalf("after growing the capacity: %+v, %v", m, err)
	}
}
