package ublk

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"vdisk/internal/uring"
)

// layoutProgram prints, for each struct field and constant the package
// mirrors, "name value" as the C compiler sees the installed UAPI headers.
// Names newer than the installed headers are guarded with #ifdef.
const layoutProgram = `
#include <stdio.h>
#include <stddef.h>
#include <errno.h>
#include <linux/ioctl.h>
#include <linux/io_uring.h>
#include <linux/ublk_cmd.h>
#define S(t) printf("sizeof_%s %zu\n", #t, sizeof(struct t));
#define O(t, f) printf("offsetof_%s_%s %zu\n", #t, #f, offsetof(struct t, f));
#define C(c) printf("%s %lld\n", #c, (long long)(c));
int main(void) {
	S(io_uring_sqe) O(io_uring_sqe, cmd_op) O(io_uring_sqe, addr) O(io_uring_sqe, len)
	O(io_uring_sqe, poll32_events) O(io_uring_sqe, user_data) O(io_uring_sqe, cmd)
	S(io_uring_cqe) O(io_uring_cqe, res) O(io_uring_cqe, flags)
	O(io_uring_sqe, off) O(io_uring_sqe, rw_flags) O(io_uring_sqe, fsync_flags)
	C(IORING_SETUP_SQE128) C(IORING_OP_NOP) C(IORING_OP_POLL_ADD) C(IORING_OP_URING_CMD)
	C(IORING_OP_READ) C(IORING_OP_WRITE) C(IORING_OP_FSYNC) C(IORING_FSYNC_DATASYNC)
	S(ublksrv_ctrl_cmd) O(ublksrv_ctrl_cmd, queue_id) O(ublksrv_ctrl_cmd, len) O(ublksrv_ctrl_cmd, addr) O(ublksrv_ctrl_cmd, data)
	S(ublksrv_ctrl_dev_info) O(ublksrv_ctrl_dev_info, max_io_buf_bytes) O(ublksrv_ctrl_dev_info, dev_id)
	O(ublksrv_ctrl_dev_info, ublksrv_pid) O(ublksrv_ctrl_dev_info, flags)
	S(ublksrv_io_desc) O(ublksrv_io_desc, nr_sectors) O(ublksrv_io_desc, start_sector) O(ublksrv_io_desc, addr)
	S(ublksrv_io_cmd) O(ublksrv_io_cmd, tag) O(ublksrv_io_cmd, result) O(ublksrv_io_cmd, addr)
	S(ublk_param_basic) O(ublk_param_basic, logical_bs_shift) O(ublk_param_basic, max_sectors) O(ublk_param_basic, dev_sectors)
	S(ublk_param_discard) O(ublk_param_discard, max_write_zeroes_sectors) O(ublk_param_discard, max_discard_segments)
	O(ublk_params, types) O(ublk_params, basic) O(ublk_params, discard)
	C(UBLK_CMD_GET_DEV_INFO) C(UBLK_CMD_ADD_DEV) C(UBLK_CMD_DEL_DEV) C(UBLK_CMD_START_DEV) C(UBLK_CMD_STOP_DEV)
	C(UBLK_CMD_SET_PARAMS) C(UBLK_CMD_GET_PARAMS) C(UBLK_IO_FETCH_REQ) C(UBLK_IO_COMMIT_AND_FETCH_REQ)
	C(UBLK_IO_RES_OK) C(UBLK_IO_RES_ABORT) C(UBLKSRV_CMD_BUF_OFFSET) C(UBLK_MAX_QUEUE_DEPTH)
	C(UBLK_IO_OP_READ) C(UBLK_IO_OP_WRITE) C(UBLK_IO_OP_FLUSH) C(UBLK_IO_OP_DISCARD) C(UBLK_IO_OP_WRITE_ZEROES)
	C(UBLK_IO_F_FUA) C(UBLK_IO_F_NOUNMAP)
	C(UBLK_ATTR_READ_ONLY) C(UBLK_ATTR_ROTATIONAL) C(UBLK_ATTR_VOLATILE_CACHE) C(UBLK_ATTR_FUA)
	C(UBLK_PARAM_TYPE_BASIC) C(UBLK_PARAM_TYPE_DISCARD)
	C(UBLK_CMD_START_USER_RECOVERY) C(UBLK_CMD_END_USER_RECOVERY) C(UBLK_F_USER_RECOVERY) C(UBLK_F_USER_RECOVERY_REISSUE)
	C(UBLK_S_DEV_LIVE) C(UBLK_S_DEV_QUIESCED)
	/* The ioctl-encoded opcodes, from the header when it has them, else built
	   with the kernel's own macros from the definitions above. */
#ifndef UBLK_U_CMD_GET_FEATURES
#define UBLK_U_CMD_GET_FEATURES _IOR('u', 0x13, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_ADD_DEV _IOWR('u', UBLK_CMD_ADD_DEV, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_GET_PARAMS _IOR('u', UBLK_CMD_GET_PARAMS, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_STOP_DEV _IOWR('u', UBLK_CMD_STOP_DEV, struct ublksrv_ctrl_cmd)
#define UBLK_U_IO_FETCH_REQ _IOWR('u', UBLK_IO_FETCH_REQ, struct ublksrv_io_cmd)
#define UBLK_U_IO_COMMIT_AND_FETCH_REQ _IOWR('u', UBLK_IO_COMMIT_AND_FETCH_REQ, struct ublksrv_io_cmd)
#endif
	C(UBLK_U_CMD_GET_FEATURES) C(UBLK_U_CMD_ADD_DEV) C(UBLK_U_CMD_GET_PARAMS) C(UBLK_U_CMD_STOP_DEV)
	C(UBLK_U_IO_FETCH_REQ) C(UBLK_U_IO_COMMIT_AND_FETCH_REQ)
#ifdef UBLK_F_USER_COPY
	C(UBLK_F_USER_COPY) C(UBLK_F_CMD_IOCTL_ENCODE) C(UBLK_FEATURES_LEN)
#endif
	return 0;
}
`

// goLayout is what the package uses, under the names layoutProgram prints.
func goLayout() map[string]int64 {
	var (
		s  uring.SQE
		c  uring.CQE
		cc ctrlCmd
		di devInfo
		d  ioDesc
		ic ioCmd
		pb paramBasic
		pd paramDiscard
		pp params
	)
	return map[string]int64{
		// The header's io_uring_sqe is the 64-byte one; SQE128 doubles it.
		"sizeof_io_uring_sqe": int64(unsafe.Sizeof(s)), "offsetof_io_uring_sqe_cmd_op": int64(unsafe.Offsetof(s.Off)),
		"offsetof_io_uring_sqe_off": int64(unsafe.Offsetof(s.Off)), "offsetof_io_uring_sqe_rw_flags": int64(unsafe.Offsetof(s.OpFlags)),
		"offsetof_io_uring_sqe_fsync_flags": int64(unsafe.Offsetof(s.OpFlags)),
		"offsetof_io_uring_sqe_addr":        int64(unsafe.Offsetof(s.Addr)), "offsetof_io_uring_sqe_len": int64(unsafe.Offsetof(s.Len)),
		"offsetof_io_uring_sqe_poll32_events": int64(unsafe.Offsetof(s.OpFlags)), "offsetof_io_uring_sqe_user_data": int64(unsafe.Offsetof(s.UserData)),
		"offsetof_io_uring_sqe_cmd": int64(unsafe.Offsetof(s.Addr3)),
		"sizeof_io_uring_cqe":       int64(unsafe.Sizeof(c)), "offsetof_io_uring_cqe_res": int64(unsafe.Offsetof(c.Res)), "offsetof_io_uring_cqe_flags": int64(unsafe.Offsetof(c.Flags)),
		"IORING_SETUP_SQE128": uring.SetupSQE128, "IORING_OP_NOP": uring.OpNop, "IORING_OP_POLL_ADD": uring.OpPollAdd, "IORING_OP_URING_CMD": uring.OpURingCmd,
		"IORING_OP_READ": uring.OpRead, "IORING_OP_WRITE": uring.OpWrite, "IORING_OP_FSYNC": uring.OpFsync, "IORING_FSYNC_DATASYNC": uring.FsyncDatasync,

		"sizeof_ublksrv_ctrl_cmd": int64(unsafe.Sizeof(cc)), "offsetof_ublksrv_ctrl_cmd_queue_id": int64(unsafe.Offsetof(cc.queueID)),
		"offsetof_ublksrv_ctrl_cmd_len": int64(unsafe.Offsetof(cc.len)), "offsetof_ublksrv_ctrl_cmd_addr": int64(unsafe.Offsetof(cc.addr)),
		"offsetof_ublksrv_ctrl_cmd_data": int64(unsafe.Offsetof(cc.data)),
		"sizeof_ublksrv_ctrl_dev_info":   int64(unsafe.Sizeof(di)), "offsetof_ublksrv_ctrl_dev_info_max_io_buf_bytes": int64(unsafe.Offsetof(di.maxIOBufBytes)),
		"offsetof_ublksrv_ctrl_dev_info_dev_id": int64(unsafe.Offsetof(di.devID)), "offsetof_ublksrv_ctrl_dev_info_ublksrv_pid": int64(unsafe.Offsetof(di.ublksrvPID)),
		"offsetof_ublksrv_ctrl_dev_info_flags": int64(unsafe.Offsetof(di.flags)),
		"sizeof_ublksrv_io_desc":               int64(unsafe.Sizeof(d)), "offsetof_ublksrv_io_desc_nr_sectors": int64(unsafe.Offsetof(d.nrSectors)),
		"offsetof_ublksrv_io_desc_start_sector": int64(unsafe.Offsetof(d.startSector)), "offsetof_ublksrv_io_desc_addr": int64(unsafe.Offsetof(d.addr)),
		"sizeof_ublksrv_io_cmd": int64(unsafe.Sizeof(ic)), "offsetof_ublksrv_io_cmd_tag": int64(unsafe.Offsetof(ic.tag)),
		"offsetof_ublksrv_io_cmd_result": int64(unsafe.Offsetof(ic.result)), "offsetof_ublksrv_io_cmd_addr": int64(unsafe.Offsetof(ic.addr)),
		"sizeof_ublk_param_basic": int64(unsafe.Sizeof(pb)), "offsetof_ublk_param_basic_logical_bs_shift": int64(unsafe.Offsetof(pb.logicalBSShift)),
		"offsetof_ublk_param_basic_max_sectors": int64(unsafe.Offsetof(pb.maxSectors)), "offsetof_ublk_param_basic_dev_sectors": int64(unsafe.Offsetof(pb.devSectors)),
		"sizeof_ublk_param_discard": int64(unsafe.Sizeof(pd)), "offsetof_ublk_param_discard_max_write_zeroes_sectors": int64(unsafe.Offsetof(pd.maxWriteZeroesSectors)),
		"offsetof_ublk_param_discard_max_discard_segments": int64(unsafe.Offsetof(pd.maxDiscardSegments)),
		"offsetof_ublk_params_types":                       int64(unsafe.Offsetof(pp.types)), "offsetof_ublk_params_basic": int64(unsafe.Offsetof(pp.basic)),
		"offsetof_ublk_params_discard": int64(unsafe.Offsetof(pp.discard)),

		"UBLK_CMD_GET_DEV_INFO": cmdGetDevInfo, "UBLK_CMD_ADD_DEV": cmdAddDev, "UBLK_CMD_DEL_DEV": cmdDelDev, "UBLK_CMD_START_DEV": cmdStartDev,
		"UBLK_CMD_STOP_DEV": cmdStopDev, "UBLK_CMD_SET_PARAMS": cmdSetParams, "UBLK_CMD_GET_PARAMS": cmdGetParams,
		"UBLK_IO_FETCH_REQ": ioFetchReq, "UBLK_IO_COMMIT_AND_FETCH_REQ": ioCommitAndFetch,
		"UBLK_IO_RES_OK": ioResOK, "UBLK_IO_RES_ABORT": ioResAbort, "UBLKSRV_CMD_BUF_OFFSET": cmdBufOffset, "UBLK_MAX_QUEUE_DEPTH": maxQueueDepth,
		"UBLK_IO_OP_READ": ioOpRead, "UBLK_IO_OP_WRITE": ioOpWrite, "UBLK_IO_OP_FLUSH": ioOpFlush, "UBLK_IO_OP_DISCARD": ioOpDiscard,
		"UBLK_IO_OP_WRITE_ZEROES": ioOpWriteZeroes, "UBLK_IO_F_FUA": ioFFUA, "UBLK_IO_F_NOUNMAP": ioFNoUnmap,
		"UBLK_ATTR_READ_ONLY": attrReadOnly, "UBLK_ATTR_ROTATIONAL": attrRotational, "UBLK_ATTR_VOLATILE_CACHE": attrVolatileCache, "UBLK_ATTR_FUA": attrFUA,
		"UBLK_PARAM_TYPE_BASIC": paramTypeBasic, "UBLK_PARAM_TYPE_DISCARD": paramTypeDiscard,
		"UBLK_CMD_START_USER_RECOVERY": cmdStartRecov, "UBLK_CMD_END_USER_RECOVERY": cmdEndRecov,
		"UBLK_F_USER_RECOVERY": featUserRecovery, "UBLK_F_USER_RECOVERY_REISSUE": featRecovReissue,
		"UBLK_S_DEV_LIVE": devStateLive, "UBLK_S_DEV_QUIESCED": devStateQuiesced,
		"UBLK_U_CMD_GET_FEATURES": int64(ctrlOp(cmdGetFeatures, true)), "UBLK_U_CMD_ADD_DEV": int64(ctrlOp(cmdAddDev, true)),
		"UBLK_U_CMD_GET_PARAMS": int64(ctrlOp(cmdGetParams, true)), "UBLK_U_CMD_STOP_DEV": int64(ctrlOp(cmdStopDev, true)),
		"UBLK_U_IO_FETCH_REQ": int64(ioOp(ioFetchReq, true)), "UBLK_U_IO_COMMIT_AND_FETCH_REQ": int64(ioOp(ioCommitAndFetch, true)),
		"UBLK_F_USER_COPY": featUserCopy, "UBLK_F_CMD_IOCTL_ENCODE": featCmdIoctlEncode, "UBLK_FEATURES_LEN": featuresLen,
	}
}

// TestLayoutMatchesUAPI compiles a C program against the installed kernel
// headers (linux-libc-dev) and checks every size, offset and constant the
// package mirrors against it.
func TestLayoutMatchesUAPI(t *testing.T) {
	cc, err := exec.LookPath("cc")
	if err != nil {
		t.Skipf("no C compiler to read the UAPI headers with: %v", err)
	}
	if _, err := os.Stat("/usr/include/linux/ublk_cmd.h"); err != nil {
		t.Skipf("no ublk UAPI header (linux-libc-dev older than 6.0?): %v", err)
	}
	dir := t.TempDir()
	src, bin := filepath.Join(dir, "layout.c"), filepath.Join(dir, "layout")
	if err := os.WriteFile(src, []byte(layoutProgram), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(cc, "-o", bin, src).CombinedOutput(); err != nil {
		t.Fatalf("compile the layout program: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatalf("run the layout program: %v", err)
	}
	want := goLayout()
	seen := 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			t.Fatalf("bad line %q", sc.Text())
		}
		c, err := strconv.ParseInt(val, 10, 64)
		if err != nil {
			t.Fatalf("bad value in %q: %v", sc.Text(), err)
		}
		g, ok := want[name]
		if !ok {
			t.Errorf("%s: the C side printed it, the Go side has no value", name)
			continue
		}
		seen++
		if g != c {
			t.Errorf("%s: Go %d, C %d", name, g, c)
		}
	}
	if need := len(want) - 3; seen < need { // the three UBLK_F_/FEATURES names may predate the header
		t.Fatalf("compared %d names, want at least %d", seen, need)
	}
}
