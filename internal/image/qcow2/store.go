package qcow2

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// store is the host file under an Image: the bytes of the qcow2 file.
// Its methods may be called concurrently.
type store interface {
	io.ReaderAt
	io.WriterAt
	// Sync makes every completed write durable (fdatasync).
	Sync() error
	// Punch releases the storage of a range, which then reads as zeroes.
	Punch(off, n int64) error
	// Size is the current length of the file.
	Size() (int64, error)
	Close() error
}

// fileStore is a store over an open file.
type fileStore struct{ f *os.File }

func (s fileStore) ReadAt(p []byte, off int64) (int, error)  { return s.f.ReadAt(p, off) }
func (s fileStore) WriteAt(p []byte, off int64) (int, error) { return s.f.WriteAt(p, off) }
func (s fileStore) Close() error                             { return s.f.Close() }

func (s fileStore) Sync() error { return unix.Fdatasync(int(s.f.Fd())) }

func (s fileStore) Punch(off, n int64) error {
	return unix.Fallocate(int(s.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

func (s fileStore) Size() (int64, error) {
	st, err := s.f.Stat()
	if err != nil {
		return 0, fmt.Errorf("qcow2: %w", err)
	}
	return st.Size(), nil
}
