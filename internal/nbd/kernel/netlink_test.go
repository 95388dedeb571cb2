package kernel

import (
	"errors"
	"os"
	"testing"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
)

// attrMap decodes one level of attributes: type -> raw data (nested kept raw).
func attrMap(t *testing.T, b []byte) map[uint16][]netlink.Attribute {
	t.Helper()
	attrs, err := netlink.UnmarshalAttributes(b)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	m := make(map[uint16][]netlink.Attribute)
	for _, a := range attrs {
		m[a.Type&^netlink.Nested] = append(m[a.Type&^netlink.Nested], a)
	}
	return m
}

func u64(t *testing.T, m map[uint16][]netlink.Attribute, typ uint16) uint64 {
	t.Helper()
	a, ok := m[typ]
	if !ok || len(a) != 1 || len(a[0].Data) != 8 {
		t.Fatalf("attribute %d: %v, want one u64", typ, a)
	}
	return nlenc64(a[0].Data)
}

func nlenc64(b []byte) uint64 {
	var v uint64
	for i := 7; i >= 0; i-- { // native endian: little on every arch vdisk builds for
		v = v<<8 | uint64(b[i])
	}
	return v
}

func TestConnectAttrs(t *testing.T) {
	tests := []struct {
		name      string
		fds       []int
		cfg       Config
		wantIndex int // -1: no NBD_ATTR_INDEX
		wantFlags uint64
	}{
		{
			name: "kernel picks, one socket, read-only",
			fds:  []int{7}, cfg: Config{Index: -1, Size: 1 << 30, BlockSize: 4096, Flags: FlagReadOnly | FlagFlush},
			wantIndex: -1, wantFlags: 0x7,
		},
		{
			name: "index 3, two sockets, timeouts, backend",
			fds:  []int{5, 9}, cfg: Config{Index: 3, Size: 512, BlockSize: 512, Flags: FlagMultiConn | FlagTrim | FlagFUA,
				Timeout: 1500 * time.Millisecond, DeadConnTimeout: time.Minute, Backend: "vdisk:abc"},
			wantIndex: 3, wantFlags: 0x129,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := connectAttrs(tt.fds, tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			m := attrMap(t, b)
			if tt.wantIndex < 0 {
				if _, ok := m[attrIndex]; ok {
					t.Fatal("NBD_ATTR_INDEX present, want the kernel to choose")
				}
			} else if a := m[attrIndex]; len(a) != 1 || len(a[0].Data) != 4 || int(a[0].Data[0]) != tt.wantIndex {
				t.Fatalf("NBD_ATTR_INDEX = %v, want %d", a, tt.wantIndex)
			}
			if got := u64(t, m, attrSizeBytes); got != uint64(tt.cfg.Size) {
				t.Errorf("size %d, want %d", got, tt.cfg.Size)
			}
			if got := u64(t, m, attrBlockSizeBytes); got != uint64(tt.cfg.BlockSize) {
				t.Errorf("block size %d, want %d", got, tt.cfg.BlockSize)
			}
			if got := u64(t, m, attrServerFlags); got != tt.wantFlags {
				t.Errorf("server flags %#x, want %#x", got, tt.wantFlags)
			}
			if tt.cfg.Timeout > 0 {
				if got, want := u64(t, m, attrTimeout), seconds(tt.cfg.Timeout); got != want {
					t.Errorf("timeout %d, want %d", got, want)
				}
			} else if _, ok := m[attrTimeout]; ok {
				t.Error("timeout sent though zero")
			}
			if tt.cfg.DeadConnTimeout > 0 {
				if got := u64(t, m, attrDeadConnTimeout); got != 60 {
					t.Errorf("dead conn timeout %d, want 60", got)
				}
			}
			if tt.cfg.Backend != "" {
				if a := m[attrBackend]; len(a) != 1 || string(a[0].Data) != tt.cfg.Backend+"\x00" {
					t.Errorf("backend %v", a)
				}
			}
			socks := m[attrSockets]
			if len(socks) != 1 || socks[0].Type&netlink.Nested == 0 {
				t.Fatalf("NBD_ATTR_SOCKETS = %v, want one nested attribute", socks)
			}
			items, err := netlink.UnmarshalAttributes(socks[0].Data)
			if err != nil || len(items) != len(tt.fds) {
				t.Fatalf("socket items %v, %v; want %d", items, err, len(tt.fds))
			}
			for i, it := range items {
				fd, err := netlink.UnmarshalAttributes(it.Data)
				if it.Type&^netlink.Nested != sockItem || err != nil || len(fd) != 1 || fd[0].Type != sockFD || int(fd[0].Data[0]) != tt.fds[i] {
					t.Fatalf("socket item %d: %+v %v %v, want fd %d", i, it, fd, err, tt.fds[i])
				}
			}
		})
	}
	if seconds(time.Nanosecond) != 1 || seconds(2*time.Second) != 2 {
		t.Error("seconds does not round up")
	}
}

func TestReconfigureAttrs(t *testing.T) {
	b, err := reconfigureAttrs(2, "", []int{11})
	if err != nil {
		t.Fatal(err)
	}
	m := attrMap(t, b)
	if a := m[attrIndex]; len(a) != 1 || a[0].Data[0] != 2 {
		t.Fatalf("index %v", a)
	}
	if len(m[attrSockets]) != 1 || len(m) != 2 {
		t.Fatalf("attributes %v, want index and sockets", m)
	}
	// The kernel refuses a reconfigure without the device's backend name.
	b, err = reconfigureAttrs(2, "vdisk:x", []int{11})
	if err != nil {
		t.Fatal(err)
	}
	if a := attrMap(t, b)[attrBackend]; len(a) != 1 || string(a[0].Data) != "vdisk:x\x00" {
		t.Fatalf("backend %v", a)
	}
}

// statusReply builds NBD_CMD_STATUS's reply the way the kernel does.
func statusReply(t testing.TB, devs []DeviceStatus) []byte {
	ae := netlink.NewAttributeEncoder()
	ae.Nested(attrDeviceList, func(list *netlink.AttributeEncoder) error {
		for _, d := range devs {
			list.Nested(deviceItem, func(item *netlink.AttributeEncoder) error {
				item.Uint32(deviceIndex, uint32(d.Index))
				c := uint8(0)
				if d.Connected {
					c = 1
				}
				item.Uint8(deviceConnected, c)
				return nil
			})
		}
		return nil
	})
	b, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseStatus(t *testing.T) {
	want := []DeviceStatus{{0, true}, {1, false}, {7, true}}
	got, err := parseStatus([]genetlink.Message{{Data: statusReply(t, want)}})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
	// An item without an index is an error, not a device -1.
	ae := netlink.NewAttributeEncoder()
	ae.Nested(attrDeviceList, func(l *netlink.AttributeEncoder) error {
		l.Nested(deviceItem, func(i *netlink.AttributeEncoder) error { i.Uint8(deviceConnected, 1); return nil })
		return nil
	})
	b, _ := ae.Encode()
	if _, err := parseStatus([]genetlink.Message{{Data: b}}); err == nil {
		t.Fatal("item without an index accepted")
	}
}

func TestParseIndex(t *testing.T) {
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(attrIndex, 12)
	b, _ := ae.Encode()
	if idx, err := parseIndex([]genetlink.Message{{Data: b}}); err != nil || idx != 12 {
		t.Fatalf("parseIndex = %d, %v; want 12", idx, err)
	}
	if _, err := parseIndex([]genetlink.Message{{Data: nil}}); err == nil {
		t.Fatal("reply without an index accepted")
	}
	ae = netlink.NewAttributeEncoder()
	ae.Uint8(attrIndex, 1) // wrong width
	b, _ = ae.Encode()
	if _, err := parseIndex([]genetlink.Message{{Data: b}}); err == nil {
		t.Fatal("1-byte index accepted")
	}
}

func FuzzParseReplies(f *testing.F) {
	f.Add(statusReply(f, []DeviceStatus{{0, true}, {3, false}}))
	f.Add([]byte{8, 0, 1, 0, 5, 0, 0, 0})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		msgs := []genetlink.Message{{Data: b}}
		if list, err := parseStatus(msgs); err == nil {
			for _, d := range list {
				if d.Index < 0 {
					t.Fatalf("negative index from %x", b)
				}
			}
		}
		_, _ = parseIndex(msgs)
	})
}

func TestConfigValidate(t *testing.T) {
	sock := os.Stdin
	tests := []struct {
		name  string
		socks []*os.File
		cfg   Config
		ok    bool
	}{
		{name: "defaults", socks: []*os.File{sock}, cfg: Config{Index: -1, Size: 1 << 20}, ok: true},
		{name: "no sockets", cfg: Config{Index: -1, Size: 1 << 20}},
		{name: "two sockets without multi-conn", socks: []*os.File{sock, sock}, cfg: Config{Index: -1, Size: 1 << 20}},
		{name: "two sockets with multi-conn", socks: []*os.File{sock, sock}, cfg: Config{Index: -1, Size: 1 << 20, Flags: FlagMultiConn}, ok: true},
		{name: "nil socket", socks: []*os.File{nil}, cfg: Config{Index: -1, Size: 1 << 20}},
		{name: "bad index", socks: []*os.File{sock}, cfg: Config{Index: -2, Size: 1 << 20}},
		{name: "block size not a power of two", socks: []*os.File{sock}, cfg: Config{Index: 0, Size: 3 << 20, BlockSize: 768}},
		{name: "block size above a page", socks: []*os.File{sock}, cfg: Config{Index: 0, Size: 1 << 20, BlockSize: 1 << 20}},
		{name: "size not a multiple", socks: []*os.File{sock}, cfg: Config{Index: 0, Size: 4097, BlockSize: 4096}},
		{name: "zero size", socks: []*os.File{sock}, cfg: Config{Index: 0}},
		{name: "negative timeout", socks: []*os.File{sock}, cfg: Config{Index: 0, Size: 512, Timeout: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.cfg
			err := c.Validate(tt.socks)
			if (err == nil) != tt.ok {
				t.Fatalf("Validate = %v, want ok %v", err, tt.ok)
			}
			if tt.ok && c.BlockSize == 0 {
				t.Fatal("block size default not filled in")
			}
		})
	}
}

// TestConnectUnavailable runs on a kernel without the nbd module (this
// host): Connect must say so, not hang or panic.
func TestConnectUnavailable(t *testing.T) {
	if _, err := os.Stat("/dev/nbd0"); err == nil {
		t.Skip("this kernel has nbd devices")
	}
	if f, err := dialFamily(); err == nil {
		f.close()
		t.Skip("this kernel has the nbd netlink family")
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	_, err = Connect([]*os.File{r}, Config{Index: -1, Size: 1 << 20})
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Connect = %v, want ErrUnavailable", err)
	}
	if _, err := Available(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Available = %v, want ErrUnavailable", err)
	}
}
