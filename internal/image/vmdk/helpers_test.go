package vmdk

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

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

// streamPath streams src into a new streamOptimized VMDK at path.
func streamPath(path string, src blockdev.Device, grain int64) error {
	handled, err := image.Stream(path, src, image.CreateOptions{Format: Name, ClusterSize: grain,
		Options: map[string]string{"subformat": StreamOptimized}})
	if err == nil && !handled {
		err = errors.New("not streamed")
	}
	return err
}

// memFile is an image.File in memory.
type memFile struct {
	mu   sync.Mutex
	b    []byte
	name string
}

func newMemFile(name string, b []byte) *memFile { return &memFile{b: b, name: name} }

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

// memNames is an image.Names of in-memory files, by name.
type memNames map[string]*memFile

func (n memNames) Open(from image.File, name string, readOnly bool) (image.File, error) {
	if f, ok := n[name]; ok {
		return f, nil
	}
	return nil, fmt.Errorf("%s: no such file", name)
}

func (n memNames) Create(from image.File, name string) (image.File, error) {
	if _, ok := n[name]; ok {
		return nil, fmt.Errorf("%s exists", name)
	}
	n[name] = newMemFile(name, nil)
	return n[name], nil
}
