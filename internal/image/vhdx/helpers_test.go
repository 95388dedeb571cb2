package vhdx

import (
	"io"
	"sync"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// blockdev0 returns d as a blockdev.Device (for helpers that take one).
func blockdev0(d *Image) blockdev.Device { return d }

// The package opens Files; most tests work on paths, through the
// registry.

func openPath(path string, opt image.OpenOptions) (*Image, error) {
	opt.Format = Name
	d, err := image.Open(path, opt)
	if err != nil {
		return nil, err
	}
	return d.(*Image), nil
}

func createPath(path string, opt image.CreateOptions) error {
	opt.Format = Name
	return image.Create(path, opt)
}

func infoPath(path string) (*image.Facts, error) { return image.Info(path, Name) }

func checkPath(path string, opt image.CheckOptions) (*image.CheckResult, error) {
	return image.Check(path, Name, opt)
}

// loadPath loads the image at path read-only, without its parent.
func loadPath(t testing.TB, path string) *Image {
	t.Helper()
	f, err := image.OpenLocal(path, image.LocalOptions{ReadOnly: true, NoLock: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, bat, err := load(f, true)
	if err == nil {
		err = img.serve(bat, true, nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// memFile is an image.File in memory.
type memFile struct {
	mu   sync.Mutex
	b    []byte
	name string
}

func newMemFile(b []byte) *memFile { return &memFile{b: b, name: "mem.vhdx"} }

func (m *memFile) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *memFile) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if end := off + int64(len(p)); end > int64(len(m.b)) {
		m.b = append(m.b, make([]byte, end-int64(len(m.b)))...)
	}
	return copy(m.b[off:], p), nil
}

func (m *memFile) Size() (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return int64(len(m.b)), nil
}

func (m *memFile) Truncate(n int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if n <= int64(len(m.b)) {
		m.b = m.b[:n]
	} else {
		m.b = append(m.b, make([]byte, n-int64(len(m.b)))...)
	}
	return nil
}

func (m *memFile) Sync() error  { return nil }
func (m *memFile) Close() error { return nil }
func (m *memFile) Name() string { return m.name }
