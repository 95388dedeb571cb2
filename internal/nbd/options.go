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
	if c.sr {
		f |= wire.FlagSendDF
	}
	return f
}

func (c *conn) optExportName(data []byte) (bool, error) {
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
	mine := c.sr && c.metaExp == x
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

// matchContexts returns the contexts a list (or, with set, a set) query
// selects: base:allocation and qemu:allocation-depth by name, and, for
// listing, every context of a namespace by "base:" or "qemu:".
func matchContexts(q string, set bool) (base, depth bool) {
	base = q == wire.MetaContextBaseAllocation || !set && q == "base:"
	depth = q == wire.MetaContextAllocationDepth || !set && q == "qemu:"
	return base, depth
}

func (c *conn) optMetaContext(opt wire.Opt, data []byte) error {
	if !c.sr {
		return c.replyErr(opt, wire.RepErrInvalid, "negotiate NBD_OPT_STRUCTURED_REPLY first")
	}
	req, err := wire.DecodeMetaContextRequest(data)
	if err != nil {
		return c.replyErr(opt, wire.RepErrInvalid, "%v", err)
	}
	for _, q := range req.Queries {
		if !strings.Contains(q, ":") {
			return c.replyErr(opt, wire.RepErrInvalid, "query %q has no namespace", q)
		}
	}
	x := c.lookup(req.Name)
	if x == nil {
		return c.replyErr(opt, wire.RepErrUnknown, "no export named %q", req.Name)
	}
	set := opt == wire.OptSetMetaContext
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
