package ublk

import (
	"context"
	"errors"
	"os"
	"testing"

	"vdisk/internal/blockdev"
)

func TestOptionsValidate(t *testing.T) {
	page := os.Getpagesize()
	tests := []struct {
		name string
		opt  Options
		ok   bool
		want Options // checked fields after defaults: Queues, Depth, MaxIO
	}{
		{name: "defaults", ok: true, want: Options{Queues: DefaultQueues, Depth: DefaultDepth, MaxIO: DefaultMaxIO}},
		{name: "explicit", opt: Options{Queues: 4, Depth: 128, MaxIO: 2 * page}, ok: true, want: Options{Queues: 4, Depth: 128, MaxIO: 2 * page}},
		{name: "too many queues", opt: Options{Queues: MaxQueues + 1}},
		{name: "negative queues", opt: Options{Queues: -1}},
		{name: "depth above the driver's", opt: Options{Depth: MaxDepth + 1}},
		{name: "max I/O not page aligned", opt: Options{MaxIO: page + 512}},
		{name: "max I/O too big", opt: Options{MaxIO: MaxMaxIO * 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := tt.opt
			err := o.Validate()
			if (err == nil) != tt.ok {
				t.Fatalf("Validate = %v, want ok %v", err, tt.ok)
			}
			if !tt.ok {
				return
			}
			if o.Queues != tt.want.Queues || o.Depth != tt.want.Depth || o.MaxIO != tt.want.MaxIO || o.Logger == nil {
				t.Fatalf("after Validate: %+v, want %+v and a logger", o, tt.want)
			}
		})
	}
}

func TestOpcodes(t *testing.T) {
	tests := []struct {
		name string
		got  uint32
		want uint32
	}{
		// Legacy opcodes are the bare command numbers.
		{name: "legacy ADD_DEV", got: ctrlOp(cmdAddDev, false), want: 0x04},
		{name: "legacy FETCH_REQ", got: ioOp(ioFetchReq, false), want: 0x20},
		// _IOWR('u', 0x04, 32 bytes) and _IOR('u', 0x13, 32 bytes), from
		// the kernel's own headers (see TestLayoutMatchesUAPI).
		{name: "UBLK_U_CMD_ADD_DEV", got: ctrlOp(cmdAddDev, true), want: 0xc0207504},
		{name: "UBLK_U_CMD_GET_FEATURES", got: ctrlOp(cmdGetFeatures, true), want: 0x80207513},
		{name: "UBLK_U_CMD_START_DEV", got: ctrlOp(cmdStartDev, true), want: 0xc0207506},
		{name: "UBLK_U_IO_COMMIT_AND_FETCH_REQ", got: ioOp(ioCommitAndFetch, true), want: 0xc0107521},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Fatalf("%#x, want %#x", tt.got, tt.want)
			}
		})
	}
}

// noTrim is a Device without the Trimmer capability.
type noTrim struct{ blockdev.Device }

// described reports an Info.
type described struct {
	*blockdev.Mem
	info blockdev.Info
}

func (d described) Info() blockdev.Info { return d.info }

func TestParams(t *testing.T) {
	const size = 8 << 20
	tests := []struct {
		name         string
		dev          blockdev.Device
		readOnly     bool
		wantAttrs    uint32
		wantTypes    uint32
		wantDiscard  bool
		wantLogShift uint8
		wantPhyShift uint8
	}{
		{name: "mem: trims, writable", dev: blockdev.NewMem(size), wantAttrs: attrVolatileCache | attrFUA,
			wantTypes: paramTypeBasic | paramTypeDiscard, wantDiscard: true, wantLogShift: 9, wantPhyShift: 12},
		{name: "no trim: write-zeroes only", dev: noTrim{blockdev.NewMem(size)}, wantAttrs: attrVolatileCache | attrFUA,
			wantTypes: paramTypeBasic | paramTypeDiscard, wantLogShift: 9, wantPhyShift: 12},
		{name: "read-only option", dev: blockdev.NewMem(size), readOnly: true, wantAttrs: attrVolatileCache | attrFUA | attrReadOnly,
			wantTypes: paramTypeBasic, wantLogShift: 9, wantPhyShift: 12},
		{name: "4k, rotational, read-only device", dev: described{blockdev.NewMem(size), blockdev.Info{LogicalBlockSize: 4096, PhysicalBlockSize: 4096, ReadOnly: true, Rotational: true}},
			wantAttrs: attrVolatileCache | attrFUA | attrReadOnly | attrRotational, wantTypes: paramTypeBasic, wantLogShift: 12, wantPhyShift: 12},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &Disk{dev: tt.dev, info: devInfo{maxIOBufBytes: 256 << 10}}
			p := d.params(size, blockdev.InfoOf(tt.dev), tt.readOnly)
			if p.len != uint32(sizeofParams) || p.types != tt.wantTypes || p.basic.attrs != tt.wantAttrs {
				t.Fatalf("len %d types %#x attrs %#x; want %d %#x %#x", p.len, p.types, p.basic.attrs, sizeofParams, tt.wantTypes, tt.wantAttrs)
			}
			if p.basic.devSectors != size>>9 || p.basic.maxSectors != 512 {
				t.Fatalf("dev_sectors %d max_sectors %d", p.basic.devSectors, p.basic.maxSectors)
			}
			if p.basic.logicalBSShift != tt.wantLogShift || p.basic.physicalBSShift != tt.wantPhyShift {
				t.Fatalf("block shifts %d/%d, want %d/%d", p.basic.logicalBSShift, p.basic.physicalBSShift, tt.wantLogShift, tt.wantPhyShift)
			}
			if p.types&paramTypeDiscard != 0 {
				if (p.discard.maxDiscardSectors != 0) != tt.wantDiscard || p.discard.maxWriteZeroesSectors == 0 ||
					p.discard.maxDiscardSegments != 1 || p.discard.discardGranularity == 0 {
					t.Fatalf("discard params %+v, want discard %v", p.discard, tt.wantDiscard)
				}
			}
		})
	}
}

// TestServeUnavailable runs on a kernel without ublk_drv (this host).
func TestServeUnavailable(t *testing.T) {
	if _, err := os.Stat(controlPath); err == nil {
		t.Skip("this kernel has ublk")
	}
	_, err := Serve(context.Background(), blockdev.NewMem(1<<20), Options{})
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Serve = %v, want ErrUnavailable", err)
	}
	if _, err := Available(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Available = %v, want ErrUnavailable", err)
	}
}

func TestServeBadSize(t *testing.T) {
	_, err := Serve(context.Background(), blockdev.NewMem(1000), Options{})
	if err == nil || errors.Is(err, ErrUnavailable) {
		t.Fatalf("Serve of a 1000-byte device = %v, want a size error", err)
	}
}
