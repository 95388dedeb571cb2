package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"

	"vdisk/internal/nbd/wire"
)

// maxOptionReplies bounds how many replies Handshake reads for NBD_OPT_GO:
// a server that never acknowledges is refused, not waited for.
const maxOptionReplies = 64

// Export is what an NBD server's handshake says about an export: what
// Connect needs to know.
type Export struct {
	// Size is the export's size in bytes.
	Size int64
	// Flags are the transmission flags, to pass to Connect as they are.
	Flags Flags
	// MinBlock and PreferredBlock are the server's block size constraints
	// (NBD_INFO_BLOCK_SIZE); zero when it sent none.
	MinBlock, PreferredBlock uint32
}

// BlockSize is the block size to give Connect: the server's preferred
// size when it is one the kernel takes (a power of two from 512 to
// pageSize) and divides Size, else its minimum, else 512.
func (e Export) BlockSize(pageSize int) int64 {
	ok := func(b uint32) bool {
		return b >= 512 && int(b) <= pageSize && bits.OnesCount32(b) == 1 && e.Size%int64(b) == 0
	}
	switch {
	case ok(e.PreferredBlock) && e.PreferredBlock >= e.MinBlock:
		return int64(e.PreferredBlock)
	case ok(e.MinBlock):
		return int64(e.MinBlock)
	default:
		return DefaultBlockSize
	}
}

// Handshake is the client side of the NBD fixed-newstyle handshake on rw
// for export name, as nbd-client does before it hands the socket to the
// kernel: NBD_OPT_GO (NBD_OPT_EXPORT_NAME when the server lacks it),
// without structured replies, which the kernel does not speak. When it
// returns, the server is in the transmission phase and rw may go to
// Connect. It reads exactly the handshake's bytes, no more. Bound it with
// a deadline on the connection.
func Handshake(rw io.ReadWriter, name string) (Export, error) {
	if err := wire.CheckString(name); err != nil {
		return Export{}, fmt.Errorf("nbd: export name: %w", err)
	}
	hflags, err := wire.ReadGreeting(rw)
	if err != nil {
		return Export{}, err
	}
	if hflags&wire.FlagFixedNewstyle == 0 {
		return Export{}, errors.New("nbd: the server does not speak fixed newstyle")
	}
	noZeroes := hflags&wire.FlagNoZeroes != 0
	cflags := wire.ClientFixedNewstyle
	if noZeroes {
		cflags |= wire.ClientNoZeroes
	}
	msg := binary.BigEndian.AppendUint32(nil, uint32(cflags))
	msg = wire.AppendOption(msg, wire.OptGo, wire.AppendInfoRequest(nil, wire.InfoRequest{
		Name: name, Infos: []wire.InfoType{wire.InfoBlockSize},
	}))
	if _, err := rw.Write(msg); err != nil {
		return Export{}, fmt.Errorf("nbd: send NBD_OPT_GO: %w", err)
	}
	var ex Export
	haveExport := false
	for range maxOptionReplies {
		rep, err := wire.ReadOptionReply(rw)
		if err != nil {
			return Export{}, err
		}
		if rep.Opt != wire.OptGo {
			return Export{}, fmt.Errorf("nbd: reply to option %d while waiting for NBD_OPT_GO", rep.Opt)
		}
		switch {
		case rep.Type == wire.RepErrUnsup:
			return exportName(rw, name, noZeroes)
		case rep.Type.IsError():
			return Export{}, fmt.Errorf("nbd: export %q refused (reply %#x): %q", name, uint32(rep.Type), printable(rep.Data))
		case rep.Type == wire.RepInfo:
			in, err := wire.DecodeInfo(rep.Data)
			if err != nil {
				return Export{}, err
			}
			switch in.Type {
			case wire.InfoExport:
				ex.Size, ex.Flags, haveExport = int64(in.Size), Flags(in.Flags), true
			case wire.InfoBlockSize:
				ex.MinBlock, ex.PreferredBlock = in.BlockSize.Min, in.BlockSize.Preferred
			}
		case rep.Type == wire.RepAck:
			if !haveExport {
				return Export{}, errors.New("nbd: NBD_OPT_GO acknowledged without NBD_INFO_EXPORT")
			}
			return ex.check()
		}
	}
	return Export{}, fmt.Errorf("nbd: no acknowledgement of NBD_OPT_GO after %d replies", maxOptionReplies)
}

// exportName falls back to NBD_OPT_EXPORT_NAME.
func exportName(rw io.ReadWriter, name string, noZeroes bool) (Export, error) {
	if _, err := rw.Write(wire.AppendOption(nil, wire.OptExportName, []byte(name))); err != nil {
		return Export{}, fmt.Errorf("nbd: send NBD_OPT_EXPORT_NAME: %w", err)
	}
	size, flags, err := wire.ReadExportNameReply(rw, noZeroes)
	if err != nil {
		return Export{}, err
	}
	return Export{Size: int64(size), Flags: Flags(flags)}.check()
}

func (e Export) check() (Export, error) {
	if e.Size <= 0 {
		return Export{}, fmt.Errorf("nbd: the server says the export has %d bytes", e.Size)
	}
	return e, nil
}

// printable keeps a server's error message short and free of control bytes.
func printable(b []byte) string {
	const most = 200
	out := make([]rune, 0, min(len(b), most))
	for _, r := range string(b) {
		if len(out) == most {
			break
		}
		if r < 0x20 || r == 0x7f {
			r = '?'
		}
		out = append(out, r)
	}
	return string(out)
}
