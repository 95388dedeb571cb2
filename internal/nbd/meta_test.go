package nbd

import (
	"fmt"
	"slices"
	"testing"

	"vdisk/internal/nbd/wire"
)

// TestMetaContextQueries is a table of NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT queries against the rules and examples of the
// spec (doc/proto.md, "Metadata querying" and the two options), in every
// negotiation state a client may send them in.
func TestMetaContextQueries(t *testing.T) {
	const (
		base  = wire.MetaContextBaseAllocation
		depth = wire.MetaContextAllocationDepth
	)
	type tc struct {
		name    string
		set     bool
		export  string
		queries []string
		want    []string // contexts replied, in order
		err     wire.Rep // 0: ends with NBD_REP_ACK
	}
	cases := []tc{
		// "If zero queries are sent, then the server MUST return all the
		// metadata contexts that are available".
		{name: "list all", queries: nil, want: []string{base, depth}},
		// "base:" "MUST support this as a wildcard during LIST".
		{name: "list base namespace", queries: []string{"base:"}, want: []string{base}},
		// The empty leaf-name as a wildcard, for qemu's namespace too.
		{name: "list qemu namespace", queries: []string{"qemu:"}, want: []string{depth}},
		{name: "list by name", queries: []string{base}, want: []string{base}},
		{name: "list both by name", queries: []string{depth, base}, want: []string{base, depth}},
		{name: "list namespace and name", queries: []string{"base:", base}, want: []string{base}},
		// "If a [leaf-name] requested by the client is not recognized, the
		// server MUST ignore it rather than report an error."
		{name: "list unknown base leaf", queries: []string{"base:nonexistent"}, want: nil},
		// "the server MUST ignore query strings belonging to an unknown
		// namespace"; "If none of the query strings find any metadata
		// contexts, the server MUST send a single reply of type NBD_REP_ACK."
		{name: "list unknown namespace", queries: []string{"x-FooBar:"}, want: nil},
		{name: "list unknown namespace range", queries: []string{"x-ModifiedDate:20160310-20161214"}, want: nil},
		{name: "list nbd-server namespace", queries: []string{"nbd-server:"}, want: nil},
		{name: "list qemu bitmaps (none)", queries: []string{"qemu:dirty-bitmap:"}, want: nil},
		{name: "list unknown and known", queries: []string{"x-FooBar:baz", base}, want: []string{base}},
		// "lacking the required colon ... the server MAY fail the request
		// with NBD_REP_ERR_INVALID"; an empty namespace is no namespace.
		{name: "list without colon", queries: []string{"allocation"}, err: wire.RepErrInvalid},
		{name: "list empty namespace", queries: []string{":allocation"}, err: wire.RepErrInvalid},
		{name: "list empty query", queries: []string{""}, err: wire.RepErrInvalid},
		{name: "list unknown export", export: "nope", queries: []string{base}, err: wire.RepErrUnknown},

		// "If zero queries are sent, the server MUST select no metadata
		// contexts."
		{name: "set none", set: true, queries: nil, want: nil},
		// "base:" "the server MUST ignore this form during SET"; the empty
		// leaf "SHOULD NOT select any contexts during SET".
		{name: "set base namespace", set: true, queries: []string{"base:"}, want: nil},
		{name: "set qemu namespace", set: true, queries: []string{"qemu:"}, want: nil},
		{name: "set base", set: true, queries: []string{base}, want: []string{base}},
		{name: "set depth", set: true, queries: []string{depth}, want: []string{depth}},
		{name: "set both", set: true, queries: []string{depth, base}, want: []string{base, depth}},
		{name: "set unknown leaf and base", set: true, queries: []string{"base:nonexistent", base}, want: []string{base}},
		{name: "set unknown namespace", set: true, queries: []string{"x-FooBar:baz"}, want: nil},
		{name: "set without colon", set: true, queries: []string{"allocation"}, err: wire.RepErrInvalid},
		{name: "set unknown export", set: true, export: "nope", queries: []string{base}, err: wire.RepErrUnknown},
	}
	states := []struct {
		name       string
		sr, ext    bool
		setAllowed bool
	}{
		// LIST "SHOULD NOT be requested unless structured replies or
		// extended headers have been negotiated first ... a server MAY send
		// NBD_REP_ERR_INVALID": vdisk answers, as qemu-nbd does. SET "MUST
		// NOT be requested" then: NBD_REP_ERR_INVALID.
		{"before structured replies", false, false, false},
		{"after structured replies", true, false, true},
		{"after extended headers", false, true, true},
		{"after both", true, true, true},
	}
	sock, _ := memServer(t, 1<<20)
	for _, st := range states {
		t.Run(st.name, func(t *testing.T) {
			c := dial(t, sock)
			c.greet(wire.ClientFixedNewstyle | wire.ClientNoZeroes)
			if st.sr {
				c.expectRep(wire.OptStructuredReply, nil, wire.RepAck)
			}
			if st.ext {
				c.expectRep(wire.OptExtendedHeaders, nil, wire.RepAck)
			}
			for _, k := range cases {
				opt := wire.OptListMetaContext
				if k.set {
					opt = wire.OptSetMetaContext
				}
				export := k.export
				if export == "" {
					export = "disk"
				}
				wantErr := k.err
				if k.set && !st.setAllowed {
					wantErr = wire.RepErrInvalid
				}
				reps := c.optAll(opt, wire.AppendMetaContextRequest(nil, wire.MetaContextRequest{Name: export, Queries: k.queries}))
				last := reps[len(reps)-1]
				if wantErr != 0 {
					if len(reps) != 1 || last.Type != wantErr {
						t.Fatalf("%s %q: replies %v, want only %#x", k.name, k.queries, reps, wantErr)
					}
					continue
				}
				if last.Type != wire.RepAck {
					t.Fatalf("%s %q: last reply %#x %q", k.name, k.queries, last.Type, last.Data)
				}
				var got []string
				var ids []uint32
				for _, r := range reps[:len(reps)-1] {
					id, name, err := wire.DecodeMetaContext(r.Data)
					if r.Type != wire.RepMetaContext || err != nil {
						t.Fatalf("%s: reply %#x %v", k.name, r.Type, err)
					}
					got, ids = append(got, name), append(ids, id)
				}
				if !slices.Equal(got, k.want) {
					t.Fatalf("%s %q: contexts %q, want %q", k.name, k.queries, got, k.want)
				}
				for i, id := range ids {
					// Listing: the id "SHOULD be set to zero"; setting:
					// "each with a unique metadata context ID".
					if (!k.set && id != 0) || (k.set && (id == 0 || slices.Contains(ids[:i], id))) {
						t.Fatalf("%s: ids %v", k.name, ids)
					}
				}
			}
		})
	}
}

// TestMetaContextSelection: SET "replaces all previously-set metadata
// contexts (including when this command fails)", the selection holds only
// for the export it named, and STARTTLS-free renegotiation keeps the last.
func TestMetaContextSelection(t *testing.T) {
	sock, _ := memServer(t, 1<<20)
	set := func(c *client, export string, q ...string) {
		c.optAll(wire.OptSetMetaContext, wire.AppendMetaContextRequest(nil, wire.MetaContextRequest{Name: export, Queries: q}))
	}
	for i, tc := range []struct {
		setup  func(c *client)
		status bool // BLOCK_STATUS answered
	}{
		{func(c *client) { set(c, "disk", wire.MetaContextBaseAllocation) }, true},
		{func(c *client) {
			set(c, "disk", wire.MetaContextBaseAllocation)
			set(c, "nope", wire.MetaContextBaseAllocation)
		}, false},
		{func(c *client) { set(c, "disk", wire.MetaContextBaseAllocation); set(c, "disk", "bad") }, false},
		{func(c *client) { set(c, "disk", wire.MetaContextBaseAllocation); set(c, "disk") }, false},
		{func(c *client) { set(c, "disk", "base:"); set(c, "disk", wire.MetaContextBaseAllocation) }, true},
	} {
		for _, ext := range []bool{false, true} {
			t.Run(fmt.Sprintf("%d/ext=%v", i, ext), func(t *testing.T) {
				c := dial(t, sock)
				c.greet(wire.ClientFixedNewstyle | wire.ClientNoZeroes)
				if ext {
					c.expectRep(wire.OptExtendedHeaders, nil, wire.RepAck)
					c.ext = true
				} else {
					c.expectRep(wire.OptStructuredReply, nil, wire.RepAck)
				}
				tc.setup(c)
				_, flags := c.goExport("disk")
				if ext && (flags&wire.FlagBlockStatusPayload != 0) != tc.status {
					t.Fatalf("BLOCK_STATUS_PAYLOAD flag %v with contexts %v", flags&wire.FlagBlockStatusPayload != 0, tc.status)
				}
				r := c.do(wire.Request{Type: wire.CmdBlockStatus, Length: 4096}, nil)
				if (r.errno == 0) != tc.status {
					t.Fatalf("block status: %+v, want answered %v", r, tc.status)
				}
			})
		}
	}
}
