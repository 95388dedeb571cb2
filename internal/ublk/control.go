package ublk

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"vdisk/internal/uring"
)

// controlPath is the ublk driver's control device.
const controlPath = "/dev/ublk-control"

// control sends commands to /dev/ublk-control through its own io_uring.
// It is safe for concurrent use: a mutex serialises the commands.
type control struct {
	f *os.File

	mu      sync.Mutex
	r       *uring.Ring
	encoded bool // use the ioctl-encoded opcodes (UBLK_F_CMD_IOCTL_ENCODE)
}

func openControl() (*control, error) {
	f, err := os.OpenFile(controlPath, os.O_RDWR, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("ublk: %w: %s is missing (modprobe ublk_drv)", ErrUnavailable, controlPath)
		}
		return nil, fmt.Errorf("ublk: %w", err)
	}
	r, err := uring.New(4, uring.SetupSQE128)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("ublk: control ring: %w", err)
	}
	return &control{f: f, r: r}, nil
}

func (c *control) close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	err := c.r.Close()
	return errors.Join(err, c.f.Close())
}

// cmd runs control command nr for device id and returns the driver's result
// (negative results become errors). buf, of size n, is the command's in or
// out buffer; data is its inline argument.
func (c *control) cmd(nr uint32, id uint32, buf unsafe.Pointer, n uintptr, data uint64) (int32, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// One thread for submit and wait: completions that need task work run
	// on the submitting thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	s, err := c.r.GetSQE()
	if err != nil {
		return 0, err
	}
	s.Opcode = uring.OpURingCmd
	s.Fd = int32(c.f.Fd())
	s.Off = uint64(ctrlOp(nr, c.encoded || nr == cmdGetFeatures))
	s.UserData = uint64(nr)
	cc := (*ctrlCmd)(c.r.Cmd(s))
	*cc = ctrlCmd{devID: id, queueID: queueIDNone, len: uint16(n), addr: uint64(uintptr(buf)), data: data}
	if err := c.r.Submit(1); err != nil {
		return 0, err
	}
	var res int32
	got := false
	c.r.Reap(func(e uring.CQE) {
		if e.UserData == uint64(nr) {
			res, got = e.Res, true
		}
	})
	runtime.KeepAlive(buf)
	if !got {
		return 0, fmt.Errorf("ublk: control command %#x: no completion", nr)
	}
	if res < 0 {
		return res, unix.Errno(-res)
	}
	return res, nil
}

// features asks the driver which UBLK_F_* flags it supports. A driver older
// than GET_FEATURES (before Linux 6.5) answers with an error: it has none of
// the optional features and no ioctl-encoded commands.
func (c *control) features() uint64 {
	var f uint64
	if _, err := c.cmd(cmdGetFeatures, 0, unsafe.Pointer(&f), featuresLen, 0); err != nil {
		return 0
	}
	return f
}

func (c *control) addDev(info *devInfo) error {
	_, err := c.cmd(cmdAddDev, info.devID, unsafe.Pointer(info), unsafe.Sizeof(*info), 0)
	return wrapCmd("ADD_DEV", err)
}

func (c *control) setParams(id uint32, p *params) error {
	_, err := c.cmd(cmdSetParams, id, unsafe.Pointer(p), unsafe.Sizeof(*p), 0)
	return wrapCmd("SET_PARAMS", err)
}

func (c *control) startDev(id uint32, pid int) error {
	_, err := c.cmd(cmdStartDev, id, nil, 0, uint64(pid))
	return wrapCmd("START_DEV", err)
}

func (c *control) stopDev(id uint32) error {
	_, err := c.cmd(cmdStopDev, id, nil, 0, 0)
	return wrapCmd("STOP_DEV", err)
}

func (c *control) delDev(id uint32) error {
	_, err := c.cmd(cmdDelDev, id, nil, 0, 0)
	return wrapCmd("DEL_DEV", err)
}

func (c *control) devInfo(id uint32) (devInfo, error) {
	var info devInfo
	_, err := c.cmd(cmdGetDevInfo, id, unsafe.Pointer(&info), unsafe.Sizeof(info), 0)
	return info, wrapCmd("GET_DEV_INFO", err)
}

func (c *control) getParams(id uint32) (params, error) {
	p := params{len: uint32(sizeofParams)}
	_, err := c.cmd(cmdGetParams, id, unsafe.Pointer(&p), unsafe.Sizeof(p), 0)
	return p, wrapCmd("GET_PARAMS", err)
}

func (c *control) startRecovery(id uint32) error {
	_, err := c.cmd(cmdStartRecov, id, nil, 0, 0)
	return wrapCmd("START_USER_RECOVERY", err)
}

func (c *control) endRecovery(id uint32, pid int) error {
	_, err := c.cmd(cmdEndRecov, id, nil, 0, uint64(pid))
	return wrapCmd("END_USER_RECOVERY", err)
}

func wrapCmd(name string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("ublk: %s: %w", name, err)
}
