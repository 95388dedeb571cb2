package wire

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// CheckString returns an error unless s is a valid protocol string: at most
// MaxStringLen bytes of UTF-8 without NUL.
func CheckString(s string) error {
	if len(s) > MaxStringLen {
		return fmt.Errorf("nbd: string of %d bytes: %w", len(s), ErrTooLong)
	}
	if !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0 {
		return ErrBadString
	}
	return nil
}

// decoder walks a byte slice; the first error sticks.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.b) {
		d.fail(fmt.Errorf("need %d bytes, have %d: %w", n, len(d.b), ErrMalformed))
		return nil
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p
}

func (d *decoder) u16() uint16 {
	if p := d.take(2); p != nil {
		return be.Uint16(p)
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if p := d.take(4); p != nil {
		return be.Uint32(p)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if p := d.take(8); p != nil {
		return be.Uint64(p)
	}
	return 0
}

// str reads a string of n bytes and validates it.
func (d *decoder) str(n uint64) string {
	if d.err != nil {
		return ""
	}
	if n > MaxStringLen {
		d.fail(fmt.Errorf("string of %d bytes: %w", n, ErrTooLong))
		return ""
	}
	p := d.take(int(n))
	if p == nil {
		return ""
	}
	s := string(p)
	if err := CheckString(s); err != nil {
		d.fail(err)
		return ""
	}
	return s
}

// end fails unless every byte was consumed.
func (d *decoder) end() error {
	if d.err == nil && len(d.b) != 0 {
		d.fail(fmt.Errorf("%d trailing bytes: %w", len(d.b), ErrMalformed))
	}
	return d.err
}

// DecodeExportName decodes the data of NBD_OPT_EXPORT_NAME: the whole data
// is the name.
func DecodeExportName(data []byte) (string, error) {
	d := decoder{b: data}
	name := d.str(uint64(len(data)))
	if err := d.end(); err != nil {
		return "", fmt.Errorf("nbd: export name: %w", err)
	}
	return name, nil
}

// InfoRequest is the data of NBD_OPT_INFO and NBD_OPT_GO.
type InfoRequest struct {
	Name  string
	Infos []InfoType
}

// DecodeInfoRequest decodes the data of NBD_OPT_INFO or NBD_OPT_GO:
// u32 name length, name, u16 count, count × u16 information types.
func DecodeInfoRequest(data []byte) (InfoRequest, error) {
	d := decoder{b: data}
	var req InfoRequest
	req.Name = d.str(uint64(d.u32()))
	n := int(d.u16())
	if d.err == nil && len(d.b) != 2*n {
		d.fail(fmt.Errorf("%d information requests in %d bytes: %w", n, len(d.b), ErrMalformed))
	}
	if d.err == nil && n > 0 {
		req.Infos = make([]InfoType, n)
		for i := range req.Infos {
			req.Infos[i] = InfoType(d.u16())
		}
	}
	if err := d.end(); err != nil {
		return InfoRequest{}, fmt.Errorf("nbd: info request: %w", err)
	}
	return req, nil
}

// AppendInfoRequest appends the data of NBD_OPT_INFO or NBD_OPT_GO.
func AppendInfoRequest(b []byte, req InfoRequest) []byte {
	b = be.AppendUint32(b, uint32(len(req.Name)))
	b = append(b, req.Name...)
	b = be.AppendUint16(b, uint16(len(req.Infos)))
	for _, t := range req.Infos {
		b = be.AppendUint16(b, uint16(t))
	}
	return b
}

// MetaContextRequest is the data of NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT.
type MetaContextRequest struct {
	Name    string
	Queries []string
}

// DecodeMetaContextRequest decodes u32 name length, name, u32 query count,
// and count × (u32 length, query). At most MaxQueries queries are accepted.
func DecodeMetaContextRequest(data []byte) (MetaContextRequest, error) {
	d := decoder{b: data}
	var req MetaContextRequest
	req.Name = d.str(uint64(d.u32()))
	n := d.u32()
	if d.err == nil && n > MaxQueries {
		d.fail(fmt.Errorf("%d queries: %w", n, ErrTooLong))
	}
	for i := uint32(0); i < n && d.err == nil; i++ {
		q := d.str(uint64(d.u32()))
		if d.err == nil {
			req.Queries = append(req.Queries, q)
		}
	}
	if err := d.end(); err != nil {
		return MetaContextRequest{}, fmt.Errorf("nbd: meta context request: %w", err)
	}
	return req, nil
}

// AppendMetaContextRequest appends the data of a meta context option.
func AppendMetaContextRequest(b []byte, req MetaContextRequest) []byte {
	b = be.AppendUint32(b, uint32(len(req.Name)))
	b = append(b, req.Name...)
	b = be.AppendUint32(b, uint32(len(req.Queries)))
	for _, q := range req.Queries {
		b = be.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// AppendRepServer appends the data of an NBD_REP_SERVER reply: u32 name
// length, name, then the description (a human-readable string).
func AppendRepServer(b []byte, name, description string) []byte {
	b = be.AppendUint32(b, uint32(len(name)))
	b = append(b, name...)
	return append(b, description...)
}

// DecodeRepServer decodes the data of an NBD_REP_SERVER reply.
func DecodeRepServer(data []byte) (name, description string, err error) {
	d := decoder{b: data}
	name = d.str(uint64(d.u32()))
	description = d.str(uint64(len(d.b)))
	if err := d.end(); err != nil {
		return "", "", fmt.Errorf("nbd: server reply: %w", err)
	}
	return name, description, nil
}

// BlockSize is the payload of NBD_INFO_BLOCK_SIZE.
type BlockSize struct {
	Min, Preferred, Max uint32
}

// Info is one decoded NBD_REP_INFO reply. Type says which fields are set.
type Info struct {
	Type        InfoType
	Size        uint64            // InfoExport
	Flags       TransmissionFlags // InfoExport
	Name        string            // InfoName
	Description string            // InfoDescription
	BlockSize   BlockSize         // InfoBlockSize
}

// AppendInfoExport appends the data of NBD_INFO_EXPORT.
func AppendInfoExport(b []byte, size uint64, flags TransmissionFlags) []byte {
	b = be.AppendUint16(b, uint16(InfoExport))
	b = be.AppendUint64(b, size)
	return be.AppendUint16(b, uint16(flags))
}

// AppendInfoName appends the data of NBD_INFO_NAME.
func AppendInfoName(b []byte, name string) []byte {
	b = be.AppendUint16(b, uint16(InfoName))
	return append(b, name...)
}

// AppendInfoDescription appends the data of NBD_INFO_DESCRIPTION.
func AppendInfoDescription(b []byte, desc string) []byte {
	b = be.AppendUint16(b, uint16(InfoDescription))
	return append(b, desc...)
}

// AppendInfoBlockSize appends the data of NBD_INFO_BLOCK_SIZE.
func AppendInfoBlockSize(b []byte, bs BlockSize) []byte {
	b = be.AppendUint16(b, uint16(InfoBlockSize))
	b = be.AppendUint32(b, bs.Min)
	b = be.AppendUint32(b, bs.Preferred)
	return be.AppendUint32(b, bs.Max)
}

// DecodeInfo decodes the data of an NBD_REP_INFO reply. Unknown types are
// returned with only Type set.
func DecodeInfo(data []byte) (Info, error) {
	d := decoder{b: data}
	in := Info{Type: InfoType(d.u16())}
	switch in.Type {
	case InfoExport:
		in.Size = d.u64()
		in.Flags = TransmissionFlags(d.u16())
	case InfoName:
		in.Name = d.str(uint64(len(d.b)))
	case InfoDescription:
		in.Description = d.str(uint64(len(d.b)))
	case InfoBlockSize:
		in.BlockSize = BlockSize{Min: d.u32(), Preferred: d.u32(), Max: d.u32()}
	default:
		d.b = nil
	}
	if err := d.end(); err != nil {
		return Info{}, fmt.Errorf("nbd: info reply: %w", err)
	}
	return in, nil
}

// AppendMetaContext appends the data of an NBD_REP_META_CONTEXT reply.
func AppendMetaContext(b []byte, id uint32, name string) []byte {
	b = be.AppendUint32(b, id)
	return append(b, name...)
}

// DecodeMetaContext decodes the data of an NBD_REP_META_CONTEXT reply.
func DecodeMetaContext(data []byte) (id uint32, name string, err error) {
	d := decoder{b: data}
	id = d.u32()
	name = d.str(uint64(len(d.b)))
	if err := d.end(); err != nil {
		return 0, "", fmt.Errorf("nbd: meta context reply: %w", err)
	}
	return id, name, nil
}
