package ublk

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"vdisk/internal/uring"
)

// TestControlSQE sends a control command through a real io_uring to a file
// that has no uring_cmd support (a regular file): the kernel refuses it,
// and the SQE it read is checked byte by byte against struct io_uring_sqe
// and struct ublksrv_ctrl_cmd.
func TestControlSQE(t *testing.T) {
	r, err := uring.New(4, uring.SetupSQE128)
	if err != nil {
		t.Skipf("no io_uring: %v", err)
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "not-a-ublk-device"))
	if err != nil {
		t.Fatal(err)
	}
	c := &control{f: f, r: r, encoded: true}
	defer c.close()
	var info devInfo
	_, err = c.cmd(cmdAddDev, 7, unsafe.Pointer(&info), unsafe.Sizeof(info), 42)
	if !errors.Is(err, unix.EOPNOTSUPP) {
		t.Fatalf("uring_cmd on a regular file = %v, want EOPNOTSUPP from the kernel", err)
	}
	b := r.Slot(0)
	le := binary.LittleEndian
	checks := []struct {
		name string
		got  uint64
		want uint64
	}{
		{"opcode", uint64(b[0]), uring.OpURingCmd},
		{"fd", uint64(le.Uint32(b[4:])), uint64(f.Fd())},
		{"cmd_op", uint64(le.Uint32(b[8:])), 0xc0207504}, // UBLK_U_CMD_ADD_DEV
		{"user_data", le.Uint64(b[32:]), cmdAddDev},
		{"ctrl dev_id", uint64(le.Uint32(b[48:])), 7},
		{"ctrl queue_id", uint64(le.Uint16(b[52:])), 0xffff},
		{"ctrl len", uint64(le.Uint16(b[54:])), 64},
		{"ctrl addr", le.Uint64(b[56:]), uint64(uintptr(unsafe.Pointer(&info)))},
		{"ctrl data[0]", le.Uint64(b[64:]), 42},
	}
	for _, ck := range checks {
		if ck.got != ck.want {
			t.Errorf("%s = %#x, want %#x", ck.name, ck.got, ck.want)
		}
	}
}

// TestIOCommandSQE checks COMMIT_AND_FETCH_REQ's SQE: opcode, the encoded
// command, and struct ublksrv_io_cmd with the tag's buffer address.
func TestIOCommandSQE(t *testing.T) {
	r, err := uring.New(4, uring.SetupSQE128)
	if err != nil {
		t.Skipf("no io_uring: %v", err)
	}
	defer r.Close()
	const bufSize = 4096
	q := &queue{id: 3, depth: 2, bufSize: bufSize, cdev: os.Stdin, r: r, bufs: make([]byte, 2*bufSize), encoded: true}
	if err := q.prep(ioCommitAndFetch, 1, -5); err != nil {
		t.Fatal(err)
	}
	b := r.Slot(0)
	le := binary.LittleEndian
	checks := []struct {
		name string
		got  uint64
		want uint64
	}{
		{"opcode", uint64(b[0]), uring.OpURingCmd},
		{"cmd_op", uint64(le.Uint32(b[8:])), 0xc0107521}, // UBLK_U_IO_COMMIT_AND_FETCH_REQ
		{"user_data", le.Uint64(b[32:]), 1},
		{"q_id", uint64(le.Uint16(b[48:])), 3},
		{"tag", uint64(le.Uint16(b[50:])), 1},
		{"result", uint64(le.Uint32(b[52:])), uint64(uint32(0xfffffffb))},
		{"addr", le.Uint64(b[56:]), uint64(uintptr(unsafe.Pointer(&q.bufs[bufSize])))},
	}
	for _, ck := range checks {
		if ck.got != ck.want {
			t.Errorf("%s = %#x, want %#x", ck.name, ck.got, ck.want)
		}
	}
	if r.Unsubmitted() != 1 {
		t.Errorf("%d SQEs pending, want 1", r.Unsubmitted())
	}
}
