package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"

	"vdisk/internal/blockdev"
)

// The NBD transmission phase, as much as the kernel client uses (the
// project's nbd server has no entry point that skips the handshake yet).
const (
	requestMagic  = 0x25609513
	replyMagic    = 0x67446698
	maxRequest    = 32 << 20
	cmdRead       = 0
	cmdWrite      = 1
	cmdDisc       = 2
	cmdFlush      = 3
	cmdTrim       = 4
	cmdWriteZero  = 6
	cmdFlagFUA    = 1 << 0
	cmdFlagNoHole = 1 << 1
)

// serveTransmission answers the kernel's requests on c from dev, one at a
// time, until NBD_CMD_DISC or the connection closes; then it closes c.
func serveTransmission(c net.Conn, dev blockdev.Device) error {
	defer c.Close()
	var hdr [28]byte
	buf := make([]byte, 0, 1<<20)
	for {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		if m := binary.BigEndian.Uint32(hdr[0:]); m != requestMagic {
			return fmt.Errorf("bad request magic %#x", m)
		}
		flags, typ := binary.BigEndian.Uint16(hdr[4:]), binary.BigEndian.Uint16(hdr[6:])
		off, n := int64(binary.BigEndian.Uint64(hdr[16:])), int64(binary.BigEndian.Uint32(hdr[24:]))
		if (typ == cmdRead || typ == cmdWrite) && n > maxRequest {
			return fmt.Errorf("request of %d bytes", n)
		}
		var err error
		var data []byte
		switch typ {
		case cmdRead:
			data = payload(&buf, n)
			_, err = dev.ReadAt(data, off)
		case cmdWrite:
			data = payload(&buf, n)
			if _, err := io.ReadFull(c, data); err != nil {
				return err
			}
			_, err = dev.WriteAt(data, off)
			if err == nil && flags&cmdFlagFUA != 0 {
				err = dev.Flush()
			}
			data = nil
		case cmdDisc:
			return nil
		case cmdFlush:
			err = dev.Flush()
		case cmdTrim:
			err = blockdev.Trim(dev, off, n)
		case cmdWriteZero:
			err = blockdev.WriteZeroes(dev, off, n, flags&cmdFlagNoHole == 0)
		default:
			err = blockdev.ErrNotSupported
		}
		var rep [16]byte
		binary.BigEndian.PutUint32(rep[0:], replyMagic)
		binary.BigEndian.PutUint32(rep[4:], uint32(blockdev.Errno(err)))
		copy(rep[8:], hdr[8:16])
		if _, werr := c.Write(rep[:]); werr != nil {
			return werr
		}
		if err == nil && data != nil {
			if _, werr := c.Write(data); werr != nil {
				return werr
			}
		}
	}
}

// payload returns *buf resized to n bytes, growing it when needed.
func payload(buf *[]byte, n int64) []byte {
	if int64(cap(*buf)) < n {
		*buf = make([]byte, n)
	}
	return (*buf)[:n]
}
