package kernel

import (
	"errors"
	"fmt"
	"os"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
)

// The generic netlink NBD family (linux/nbd-netlink.h).
const (
	familyName = "nbd" // NBD_GENL_FAMILY_NAME

	cmdConnect     = 1 // NBD_CMD_CONNECT
	cmdDisconnect  = 2 // NBD_CMD_DISCONNECT
	cmdReconfigure = 3 // NBD_CMD_RECONFIGURE
	cmdStatus      = 5 // NBD_CMD_STATUS

	attrIndex           = 1  // NBD_ATTR_INDEX: u32
	attrSizeBytes       = 2  // NBD_ATTR_SIZE_BYTES: u64
	attrBlockSizeBytes  = 3  // NBD_ATTR_BLOCK_SIZE_BYTES: u64
	attrTimeout         = 4  // NBD_ATTR_TIMEOUT: u64 seconds
	attrServerFlags     = 5  // NBD_ATTR_SERVER_FLAGS: u64
	attrClientFlags     = 6  // NBD_ATTR_CLIENT_FLAGS: u64
	attrSockets         = 7  // NBD_ATTR_SOCKETS: nested sock items
	attrDeadConnTimeout = 8  // NBD_ATTR_DEAD_CONN_TIMEOUT: u64 seconds
	attrDeviceList      = 9  // NBD_ATTR_DEVICE_LIST: nested device items
	attrBackend         = 10 // NBD_ATTR_BACKEND_IDENTIFIER: string

	sockItem = 1 // NBD_SOCK_ITEM
	sockFD   = 1 // NBD_SOCK_FD: u32

	deviceItem      = 1 // NBD_DEVICE_ITEM
	deviceIndex     = 1 // NBD_DEVICE_INDEX: u32
	deviceConnected = 2 // NBD_DEVICE_CONNECTED: u8
)

// family is a netlink connection to the nbd family. Each operation dials
// its own, so replies never mix.
type family struct {
	c   *genetlink.Conn
	fam genetlink.Family
}

// errNoFamily means the nbd module is not loaded (or predates netlink).
var errNoFamily = errors.New("no nbd netlink family")

func dialFamily() (*family, error) {
	c, err := genetlink.Dial(nil)
	if err != nil {
		return nil, fmt.Errorf("nbd: netlink: %w", err)
	}
	fam, err := c.GetFamily(familyName)
	if err != nil {
		c.Close()
		if errors.Is(err, os.ErrNotExist) {
			return nil, errNoFamily
		}
		return nil, fmt.Errorf("nbd: netlink family %q: %w", familyName, err)
	}
	return &family{c: c, fam: fam}, nil
}

func (f *family) close() error { return f.c.Close() }

// execute sends cmd with attrs. With ack the kernel answers with an
// acknowledgement only (commands without a reply); otherwise a reply message
// is expected, and errors still come back as netlink errors.
func (f *family) execute(cmd uint8, attrs []byte, ack bool) ([]genetlink.Message, error) {
	flags := netlink.Request
	if ack {
		flags |= netlink.Acknowledge
	}
	return f.c.Execute(genetlink.Message{
		Header: genetlink.Header{Command: cmd, Version: f.fam.Version},
		Data:   attrs,
	}, f.fam.ID, flags)
}

// connectAttrs encodes NBD_CMD_CONNECT's attributes.
func connectAttrs(fds []int, c Config) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	if c.Index >= 0 {
		ae.Uint32(attrIndex, uint32(c.Index))
	}
	ae.Uint64(attrSizeBytes, uint64(c.Size))
	ae.Uint64(attrBlockSizeBytes, uint64(c.BlockSize))
	ae.Uint64(attrServerFlags, uint64(c.Flags|FlagHasFlags))
	if c.Timeout > 0 {
		ae.Uint64(attrTimeout, seconds(c.Timeout))
	}
	if c.DeadConnTimeout > 0 {
		ae.Uint64(attrDeadConnTimeout, seconds(c.DeadConnTimeout))
	}
	if c.Backend != "" {
		ae.String(attrBackend, c.Backend)
	}
	encodeSockets(ae, fds)
	return ae.Encode()
}

// reconfigureAttrs encodes NBD_CMD_RECONFIGURE's attributes.
func reconfigureAttrs(index int, backend string, fds []int) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(attrIndex, uint32(index))
	if backend != "" {
		ae.String(attrBackend, backend)
	}
	encodeSockets(ae, fds)
	return ae.Encode()
}

func indexAttrs(index int) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	if index >= 0 {
		ae.Uint32(attrIndex, uint32(index))
	}
	return ae.Encode()
}

func encodeSockets(ae *netlink.AttributeEncoder, fds []int) {
	ae.Nested(attrSockets, func(nae *netlink.AttributeEncoder) error {
		for _, fd := range fds {
			nae.Nested(sockItem, func(item *netlink.AttributeEncoder) error {
				item.Uint32(sockFD, uint32(fd))
				return nil
			})
		}
		return nil
	})
}

// parseIndex finds NBD_ATTR_INDEX in CONNECT's reply.
func parseIndex(msgs []genetlink.Message) (int, error) {
	for _, m := range msgs {
		ad, err := netlink.NewAttributeDecoder(m.Data)
		if err != nil {
			return -1, fmt.Errorf("nbd: connect reply: %w", err)
		}
		for ad.Next() {
			if ad.Type() == attrIndex {
				idx := ad.Uint32()
				if err := ad.Err(); err != nil {
					return -1, fmt.Errorf("nbd: connect reply: %w", err)
				}
				return int(idx), nil
			}
		}
		if err := ad.Err(); err != nil {
			return -1, fmt.Errorf("nbd: connect reply: %w", err)
		}
	}
	return -1, errors.New("nbd: connect reply has no device index")
}

// DeviceStatus is one device in Status's answer.
type DeviceStatus struct {
	Index     int
	Connected bool
}

// parseStatus decodes NBD_CMD_STATUS's reply: a device list.
func parseStatus(msgs []genetlink.Message) ([]DeviceStatus, error) {
	var out []DeviceStatus
	for _, m := range msgs {
		ad, err := netlink.NewAttributeDecoder(m.Data)
		if err != nil {
			return nil, fmt.Errorf("nbd: status reply: %w", err)
		}
		for ad.Next() {
			if ad.Type() != attrDeviceList {
				continue
			}
			ad.Nested(func(list *netlink.AttributeDecoder) error {
				for list.Next() {
					if list.Type() != deviceItem {
						continue
					}
					st := DeviceStatus{Index: -1}
					list.Nested(func(item *netlink.AttributeDecoder) error {
						for item.Next() {
							switch item.Type() {
							case deviceIndex:
								st.Index = int(item.Uint32())
							case deviceConnected:
								st.Connected = item.Uint8() != 0
							}
						}
						return item.Err()
					})
					if st.Index < 0 {
						return errors.New("device item without an index")
					}
					out = append(out, st)
				}
				return list.Err()
			})
		}
		if err := ad.Err(); err != nil {
			return nil, fmt.Errorf("nbd: status reply: %w", err)
		}
	}
	return out, nil
}
