package ublk

import "unsafe"

// ublk UAPI (linux/ublk_cmd.h). The Go names drop the UBLK_ prefix; each
// comment gives the kernel's name.
const (
	cmdGetDevInfo  = 0x02 // UBLK_CMD_GET_DEV_INFO
	cmdAddDev      = 0x04 // UBLK_CMD_ADD_DEV
	cmdDelDev      = 0x05 // UBLK_CMD_DEL_DEV
	cmdStartDev    = 0x06 // UBLK_CMD_START_DEV
	cmdStopDev     = 0x07 // UBLK_CMD_STOP_DEV
	cmdSetParams   = 0x08 // UBLK_CMD_SET_PARAMS
	cmdGetParams   = 0x09 // UBLK_CMD_GET_PARAMS
	cmdStartRecov  = 0x10 // UBLK_CMD_START_USER_RECOVERY
	cmdEndRecov    = 0x11 // UBLK_CMD_END_USER_RECOVERY
	cmdGetFeatures = 0x13 // the number in UBLK_U_CMD_GET_FEATURES (ioctl-encoded only)

	ioFetchReq       = 0x20 // UBLK_IO_FETCH_REQ
	ioCommitAndFetch = 0x21 // UBLK_IO_COMMIT_AND_FETCH_REQ

	ioResOK    = 0   // UBLK_IO_RES_OK
	ioResAbort = -19 // UBLK_IO_RES_ABORT: -ENODEV, the device is going away

	cmdBufOffset  = 0          // UBLKSRV_CMD_BUF_OFFSET: mmap offset of queue 0's descriptors
	maxQueueDepth = 4096       // UBLK_MAX_QUEUE_DEPTH
	featuresLen   = 8          // UBLK_FEATURES_LEN
	sectorShift   = 9          // ublk counts in 512-byte sectors
	devIDAny      = 0xffffffff // ADD_DEV: let the driver choose the device number
	queueIDNone   = 0xffff     // queue_id of a command for no queue

	featUserRecovery   = 1 << 3 // UBLK_F_USER_RECOVERY: the device outlives its server
	featRecovReissue   = 1 << 4 // UBLK_F_USER_RECOVERY_REISSUE: in-flight I/O is reissued to the new server
	featCmdIoctlEncode = 1 << 6 // UBLK_F_CMD_IOCTL_ENCODE
	featUserCopy       = 1 << 7 // UBLK_F_USER_COPY

	devStateLive     = 1 // UBLK_S_DEV_LIVE
	devStateQuiesced = 2 // UBLK_S_DEV_QUIESCED: the server died, I/O waits for recovery

	ioOpRead        = 0 // UBLK_IO_OP_READ
	ioOpWrite       = 1 // UBLK_IO_OP_WRITE
	ioOpFlush       = 2 // UBLK_IO_OP_FLUSH
	ioOpDiscard     = 3 // UBLK_IO_OP_DISCARD
	ioOpWriteZeroes = 5 // UBLK_IO_OP_WRITE_ZEROES

	ioFFUA     = 1 << 13 // UBLK_IO_F_FUA
	ioFNoUnmap = 1 << 15 // UBLK_IO_F_NOUNMAP

	attrReadOnly      = 1 << 0 // UBLK_ATTR_READ_ONLY
	attrRotational    = 1 << 1 // UBLK_ATTR_ROTATIONAL
	attrVolatileCache = 1 << 2 // UBLK_ATTR_VOLATILE_CACHE: the driver sends flushes
	attrFUA           = 1 << 3 // UBLK_ATTR_FUA: the driver sends FUA writes

	paramTypeBasic   = 1 << 0 // UBLK_PARAM_TYPE_BASIC
	paramTypeDiscard = 1 << 1 // UBLK_PARAM_TYPE_DISCARD
)

// Linux ioctl number encoding (asm-generic/ioctl.h), used by
// UBLK_F_CMD_IOCTL_ENCODE commands.
const (
	iocWrite = 1
	iocRead  = 2
	iocType  = 'u' // ublk's ioctl type
)

func ioc(dir, nr, size uint32) uint32 { return dir<<30 | size<<16 | iocType<<8 | nr }

// ctrlOp returns the uring_cmd opcode of control command nr: ioctl-encoded
// (UBLK_U_CMD_*) when encoded, else the legacy number.
func ctrlOp(nr uint32, encoded bool) uint32 {
	if !encoded {
		return nr
	}
	dir := uint32(iocRead | iocWrite)
	switch nr {
	case cmdGetDevInfo, cmdGetParams, cmdGetFeatures:
		dir = iocRead
	}
	return ioc(dir, nr, uint32(unsafe.Sizeof(ctrlCmd{})))
}

// ioOp returns the uring_cmd opcode of I/O command nr (UBLK_U_IO_* or legacy).
func ioOp(nr uint32, encoded bool) uint32 {
	if !encoded {
		return nr
	}
	return ioc(iocRead|iocWrite, nr, uint32(unsafe.Sizeof(ioCmd{})))
}

// ctrlCmd is struct ublksrv_ctrl_cmd, carried in a control SQE's cmd area.
type ctrlCmd struct {
	devID      uint32
	queueID    uint16
	len        uint16
	addr       uint64
	data       uint64
	devPathLen uint16
	pad        uint16
	reserved   uint32
}

// devInfo is struct ublksrv_ctrl_dev_info.
type devInfo struct {
	nrHWQueues    uint16
	queueDepth    uint16
	state         uint16
	pad0          uint16
	maxIOBufBytes uint32
	devID         uint32
	ublksrvPID    int32
	pad1          uint32
	flags         uint64
	ublksrvFlags  uint64
	ownerUID      uint32
	ownerGID      uint32
	reserved1     uint64
	reserved2     uint64
}

// ioDesc is struct ublksrv_io_desc: one request, in the mmap'd array.
type ioDesc struct {
	opFlags     uint32 // op in bits 0-7, UBLK_IO_F_* above
	nrSectors   uint32
	startSector uint64
	addr        uint64
}

// ioCmd is struct ublksrv_io_cmd, carried in an I/O SQE's cmd area.
type ioCmd struct {
	qID    uint16
	tag    uint16
	result int32
	addr   uint64
}

// paramBasic is struct ublk_param_basic.
type paramBasic struct {
	attrs            uint32
	logicalBSShift   uint8
	physicalBSShift  uint8
	ioOptShift       uint8
	ioMinShift       uint8
	maxSectors       uint32
	chunkSectors     uint32
	devSectors       uint64
	virtBoundaryMask uint64
}

// paramDiscard is struct ublk_param_discard.
type paramDiscard struct {
	discardAlignment      uint32
	discardGranularity    uint32
	maxDiscardSectors     uint32
	maxWriteZeroesSectors uint32
	maxDiscardSegments    uint16
	reserved0             uint16
}

// params is the head of struct ublk_params: the basic and discard parts,
// which every ublk kernel knows. Its len field tells the driver how much of
// the (since grown) structure is given.
type params struct {
	len     uint32
	types   uint32
	basic   paramBasic
	discard paramDiscard
}

// sizeofParams is the length SET_PARAMS is told: the basic and discard parts.
const sizeofParams = unsafe.Sizeof(params{})

// descSize is sizeof(struct ublksrv_io_desc).
const descSize = int(unsafe.Sizeof(ioDesc{}))

// descArraySize is how many bytes of descriptors the driver maps for a queue
// of depth tags: whole pages.
func descArraySize(depth, pageSize int) int { return roundUp(depth*descSize, pageSize) }

// descArrayOffset is the mmap offset of queue q's descriptors: the driver
// reserves room for UBLK_MAX_QUEUE_DEPTH per queue, whatever the depth.
func descArrayOffset(q, pageSize int) int64 {
	return cmdBufOffset + int64(q)*int64(roundUp(maxQueueDepth*descSize, pageSize))
}

func roundUp(n, to int) int { return (n + to - 1) / to * to }
