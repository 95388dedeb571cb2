package nbd

import (
	"fmt"
	"strings"

	"vdisk/internal/nbd/wire"
)

func (c *conn) lookup(name string) *export { return c.srv.byName[name] }

// exportFlags are x's transmission flags on this connection.
func (c *conn) exportFlags(x *export) wire.TransmissionFlags {
	f := x.flags
	if c.structured() {
		f |= wire.FlagSendDF
	}
	if c.ext && c.metaExp == x && (c.metaBase || c.metaDepth) {
		f |= wire.FlagBlockStatusPayload
	}
	return f
}

func (c *conn) optExportName(data []byte) (bool, error) {
	if c.ext {
		return true, fmt.Errorf("%w: NBD_OPT_EXPORT_NAME after extended headers were negotiated", errProtocol)
	}
	name, err := wire.DecodeExportName(data)
	if err != nil {
		return true, fmt.Errorf("%w: %v", errProtocol, err)
	}
	x := c.lookup(name)
	if x == nil {
		return true, fmt.Errorf("nbd: client asked for unknown export %q", name)
	}
	c.enter(x)
	b := wire.AppendExportNameReply(nil, uint64(x.dev.Size()), c.flags, c.noZeroes)
	if _, err := c.nc.Write(b); err != nil {
		return true, fmt.Errorf("nbd: send export name reply: %w", err)
	}
	return true, nil
}

// enter fixes the export for the transmission phase.
func (c *conn) enter(x *export) {
	c.exp = x
	c.flags = c.exportFlags(x)
	mine := c.structured() && c.metaExp == x
	c.baseOK, c.depthOK = mine && c.metaBase, mine && c.metaDepth
}

func (c *conn) optList(data []byte) error {
	if len(data) != 0 {
		return c.replyErr(wire.OptList, wire.RepErrInvalid, "NBD_OPT_LIST takes no data")
	}
	var b []byte
	for _, x := range c.srv.exports {
		b = wire.AppendOptionReply(b, wire.OptList, wire.RepServer, wire.AppendRepServer(nil, x.name, x.desc))
	}
	b = wire.AppendOptionReply(b, wire.OptList, wire.RepAck, nil)
	if _, err := c.nc.Write(b); err != nil {
		return fmt.Errorf("nbd: send export list: %w", err)
	}
	return nil
}

func (c *conn) optStartTLS(data []byte) error {
	switch {
	case c.srv.tlsConfig == nil:
		return c.replyErr(wire.OptStartTLS, wire.RepErrPolicy, "TLS is not configured on this server")
	case c.tlsDone:
		return c.replyErr(wire.OptStartTLS, wire.RepErrInvalid, "TLS is already established")
	case len(data) != 0:
		return c.replyErr(wire.OptStartTLS, wire.RepErrInvalid, "NBD_OPT_STARTTLS takes no data")
	}
	if err := c.reply(wire.OptStartTLS, wire.RepAck, nil); err != nil {
		return err
	}
	return c.upgradeTLS()
}

func (c *conn) optInfo(opt wire.Opt, data []byte) (bool, error) {
	req, err := wire.DecodeInfoRequest(data)
	if err != nil {
		return false, c.replyErr(opt, wire.RepErrInvalid, "%v", err)
	}
	x := c.lookup(req.Name)
	if x == nil {
		return false, c.replyErr(opt, wire.RepErrUnknown, "no export named %q", req.Name)
	}
	var b []byte
	info := func(p []byte) { b = wire.AppendOptionReply(b, opt, wire.RepInfo, p) }
	info(wire.AppendInfoExport(nil, uint64(x.dev.Size()), c.exportFlags(x)))
	for _, t := range req.Infos {
		switch t {
		case wire.InfoName:
			info(wire.AppendInfoName(nil, x.name))
		case wire.InfoDescription:
			if x.desc != "" {
				info(wire.AppendInfoDescription(nil, x.desc))
			}
		}
	}
	// Sent whether asked for or not: it tells the client the maximum.
	info(wire.AppendInfoBlockSize(nil, c.srv.blockSize(x)))
	b = wire.AppendOptionReply(b, opt, wire.RepAck, nil)
	if _, err := c.nc.Write(b); err != nil {
		return false, fmt.Errorf("nbd: send export info: %w", err)
	}
	if opt == wire.OptGo {
		c.enter(x)
		return true, nil
	}
	return false, nil
}

// Meta contexts. Two are served: base:allocation and qemu:allocation-depth,
// both with 32-bit values (so neither needs extended headers). Queries
// follow the spec and qemu-nbd:
//
//   - LIST with no query lists every context; SET with none selects none.
//   - "base:" and "qemu:" (a namespace with an empty leaf) list every
//     context of that namespace; SET ignores them.
//   - A full name lists or selects that context; an unknown leaf of a
//     known namespace and any query of an unknown namespace are ignored.
//   - A query without a colon is refused with NBD_REP_ERR_INVALID.
//   - LIST is answered whether or not structured replies or extended
//     headers were negotiated (the spec allows it, qemu-nbd does it);
//     SET needs one of them first.
//   - SET replaces the selection even when it fails.

// matchContexts returns the contexts a list (or, with set, a set) query
// selects.
func matchContexts(q string, set bool) (base, depth bool) {
	base = q == wire.MetaContextBaseAllocation || !set && q == "base:"
	depth = q == wire.MetaContextAllocationDepth || !set && q == "qemu:"
	return base, depth
}

func (c *conn) optMetaContext(opt wire.Opt, data []byte) error {
	set := opt == wire.OptSetMetaContext
	if set {
		c.metaExp, c.metaBase, c.metaDepth = nil, false, false
		if !c.structured() {
			return c.replyErr(opt, wire.RepErrInvalid, "negotiate NBD_OPT_STRUCTURED_REPLY or NBD_OPT_EXTENDED_HEADERS first")
		}
	}
	req, err := wire.DecodeMetaContextRequest(data)
	if err != nil {
		return c.replyErr(opt, wire.RepErrInvalid, "%v", err)
	}
	for _, q := range req.Queries {
		if i := strings.IndexByte(q, ':'); i <= 0 {
			return c.replyErr(opt, wire.RepErrInvalid, "query %q does not start with a namespace and a colon", q)
		}
	}
	x := c.lookup(req.Name)
	if x == nil {
		return c.replyErr(opt, wire.RepErrUnknown, "no export named %q", req.Name)
	}
	all := !set && len(req.Queries) == 0
	base, depth := all, all
	for _, q := range req.Queries {
		b, d := matchContexts(q, set)
		base, depth = base || b, depth || d
	}
	var b []byte
	for _, m := range []struct {
		on   bool
		id   uint32
		name string
	}{{base, baseAllocationID, wire.MetaContextBaseAllocation}, {depth, allocationDepthID, wire.MetaContextAllocationDepth}} {
		if !m.on {
			continue
		}
		id := m.id
		if !set {
			id = 0 // listing: the id is reserved
		}
		b = wire.AppendOptionReply(b, opt, wire.RepMetaContext, wire.AppendMetaContext(nil, id, m.name))
	}
	if set {
		c.metaExp, c.metaBase, c.metaDepth = x, base, depth
	}
	b = wire.AppendOptionReply(b, opt, wire.RepAck, nil)
	if _, err := c.nc.Write(b); err != nil {
		return fmt.Errorf("nbd: send meta contexts: %w", err)
	}
	return nil
}
