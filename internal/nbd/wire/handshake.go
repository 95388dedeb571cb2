package wire

import (
	"encoding/binary"
	"fmt"
	"io"
)

var be = binary.BigEndian

// AppendGreeting appends the newstyle server greeting: NBDMAGIC, IHAVEOPT
// and the handshake flags.
func AppendGreeting(b []byte, flags HandshakeFlags) []byte {
	b = be.AppendUint64(b, Magic)
	b = be.AppendUint64(b, OptMagic)
	return be.AppendUint16(b, uint16(flags))
}

// ReadGreeting reads a newstyle server greeting and returns its handshake
// flags (the client's side).
func ReadGreeting(r io.Reader) (HandshakeFlags, error) {
	var b [GreetingSize]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, fmt.Errorf("nbd: read greeting: %w", err)
	}
	if be.Uint64(b[0:]) != Magic || be.Uint64(b[8:]) != OptMagic {
		return 0, fmt.Errorf("nbd: greeting: %w", ErrBadMagic)
	}
	return HandshakeFlags(be.Uint16(b[16:])), nil
}

// ReadClientFlags reads the client's 32-bit flags.
func ReadClientFlags(r io.Reader) (ClientFlags, error) {
	var b [4]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, fmt.Errorf("nbd: read client flags: %w", err)
	}
	return ClientFlags(be.Uint32(b[:])), nil
}

// OptionHeader is the fixed part of an option request. Len bytes of option
// data follow it on the wire.
type OptionHeader struct {
	Opt Opt
	Len uint32
}

// optionHeaderSize is IHAVEOPT, the option and the data length.
const optionHeaderSize = 16

// ReadOptionHeader reads the header of an option request. It does not read
// the data: the caller checks Len (see ReadOption) first.
func ReadOptionHeader(r io.Reader) (OptionHeader, error) {
	var b [optionHeaderSize]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return OptionHeader{}, fmt.Errorf("nbd: read option header: %w", err)
	}
	if be.Uint64(b[0:]) != OptMagic {
		return OptionHeader{}, fmt.Errorf("nbd: option header: %w", ErrBadMagic)
	}
	return OptionHeader{Opt: Opt(be.Uint32(b[8:])), Len: be.Uint32(b[12:])}, nil
}

// ReadOption reads a whole option request. Data longer than MaxOptionLen is
// refused with ErrTooLong before anything of it is read, and the header is
// still returned, so the caller may skip the data and answer.
func ReadOption(r io.Reader) (OptionHeader, []byte, error) {
	h, err := ReadOptionHeader(r)
	if err != nil {
		return h, nil, err
	}
	if h.Len > MaxOptionLen {
		return h, nil, fmt.Errorf("nbd: option %d carries %d bytes: %w", h.Opt, h.Len, ErrTooLong)
	}
	data := make([]byte, h.Len)
	if _, err := io.ReadFull(r, data); err != nil {
		return h, nil, fmt.Errorf("nbd: read option %d data: %w", h.Opt, err)
	}
	return h, data, nil
}

// AppendOption appends an option request (the client's side).
func AppendOption(b []byte, opt Opt, data []byte) []byte {
	b = be.AppendUint64(b, OptMagic)
	b = be.AppendUint32(b, uint32(opt))
	b = be.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// optionReplyHeaderSize is the reply magic, option, type and length.
const optionReplyHeaderSize = 20

// AppendOptionReply appends an option reply with its data.
func AppendOptionReply(b []byte, opt Opt, rep Rep, data []byte) []byte {
	b = be.AppendUint64(b, RepMagic)
	b = be.AppendUint32(b, uint32(opt))
	b = be.AppendUint32(b, uint32(rep))
	b = be.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// OptionReply is one reply of option haggling.
type OptionReply struct {
	Opt  Opt
	Type Rep
	Data []byte
}

// ReadOptionReply reads one option reply (the client's side). Data longer
// than MaxOptionReplyLen is refused with ErrTooLong.
func ReadOptionReply(r io.Reader) (OptionReply, error) {
	var b [optionReplyHeaderSize]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return OptionReply{}, fmt.Errorf("nbd: read option reply: %w", err)
	}
	if be.Uint64(b[0:]) != RepMagic {
		return OptionReply{}, fmt.Errorf("nbd: option reply: %w", ErrBadMagic)
	}
	rep := OptionReply{Opt: Opt(be.Uint32(b[8:])), Type: Rep(be.Uint32(b[12:]))}
	n := be.Uint32(b[16:])
	if n > MaxOptionReplyLen {
		return rep, fmt.Errorf("nbd: option reply of %d bytes: %w", n, ErrTooLong)
	}
	rep.Data = make([]byte, n)
	if _, err := io.ReadFull(r, rep.Data); err != nil {
		return rep, fmt.Errorf("nbd: read option reply data: %w", err)
	}
	return rep, nil
}

// AppendExportNameReply appends the server's answer to NBD_OPT_EXPORT_NAME:
// size, transmission flags and, unless noZeroes, 124 zero bytes.
func AppendExportNameReply(b []byte, size uint64, flags TransmissionFlags, noZeroes bool) []byte {
	b = be.AppendUint64(b, size)
	b = be.AppendUint16(b, uint16(flags))
	if !noZeroes {
		b = append(b, make([]byte, ExportNameReplyZeroes)...)
	}
	return b
}

// ReadExportNameReply reads the answer to NBD_OPT_EXPORT_NAME (the client's
// side).
func ReadExportNameReply(r io.Reader, noZeroes bool) (size uint64, flags TransmissionFlags, err error) {
	n := 10
	if !noZeroes {
		n += ExportNameReplyZeroes
	}
	var b [10 + ExportNameReplyZeroes]byte
	if _, err := io.ReadFull(r, b[:n]); err != nil {
		return 0, 0, fmt.Errorf("nbd: read export name reply: %w", err)
	}
	return be.Uint64(b[0:]), TransmissionFlags(be.Uint16(b[8:])), nil
}
