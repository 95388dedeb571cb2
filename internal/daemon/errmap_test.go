package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"syscall"
	"testing"
	"time"

	"vdisk/internal/api"
	"vdisk/internal/blockdev"
	"vdisk/internal/crypt/luks"
	"vdisk/internal/image"
	"vdisk/internal/loop"
	"vdisk/internal/nbd/kernel"
	"vdisk/internal/stack"
	"vdisk/internal/storage/chunked"
)

func TestToAPIError(t *testing.T) {
	tests := []struct {
		name   string
		err    error
		code   string
		status int
	}{
		{name: "locked", err: fmt.Errorf("open x: %w", blockdev.ErrLocked), code: api.CodeLocked, status: http.StatusConflict},
		{name: "no space", err: fmt.Errorf("create x: %w: %w", blockdev.ErrNoSpace, syscall.ENOSPC), code: api.CodeNoSpace, status: http.StatusServiceUnavailable},
		{name: "quota", err: fmt.Errorf("create x: %w", syscall.EDQUOT), code: api.CodeNoSpace, status: http.StatusServiceUnavailable},
		{name: "no loop", err: fmt.Errorf("loop: %w", loop.ErrNoFreeDevice), code: api.CodeNoLoop, status: http.StatusServiceUnavailable},
		{name: "busy", err: fmt.Errorf("detach: %w", loop.ErrBusy), code: api.CodeBusy, status: http.StatusConflict},
		{name: "fuse", err: fmt.Errorf("%w: /dev/fuse", ErrFUSEUnavailable), code: api.CodeFUSEUnavailable, status: http.StatusServiceUnavailable},
		{name: "no ublk", err: fmt.Errorf("attach x --via ublk: %w", errNoUblk), code: api.CodeViaUnavailable, status: http.StatusServiceUnavailable},
		{name: "no nbd", err: fmt.Errorf("attach x --via nbd: %w", errNoNBD), code: api.CodeViaUnavailable, status: http.StatusServiceUnavailable},
		{name: "nbd busy", err: fmt.Errorf("nbd: NBD_CMD_CONNECT: %w", kernel.ErrBusy), code: api.CodeBusy, status: http.StatusConflict},
		{name: "format", err: fmt.Errorf("image: \"x\": %w", image.ErrUnknownFormat), code: api.CodeUnknownFormat, status: http.StatusBadRequest},
		{name: "unsupported", err: fmt.Errorf("qcow2: %w", image.ErrUnsupported), code: api.CodeUnsupported, status: http.StatusBadRequest},
		{name: "backing refused", err: fmt.Errorf("qcow2: %w", image.ErrBackingRefused), code: api.CodeRefused, status: http.StatusForbidden},
		{name: "chain too deep", err: fmt.Errorf("qcow2: %w", image.ErrChainTooDeep), code: api.CodeRefused, status: http.StatusForbidden},
		{name: "kdf over the limit", err: fmt.Errorf("luks: %w", stack.ErrKDFLimit), code: api.CodeRefused, status: http.StatusForbidden},
		{name: "wrong format", err: fmt.Errorf("vhd: %w", image.ErrWrongFormat), code: api.CodeWrongFormat, status: http.StatusBadRequest},
		{name: "corrupt", err: fmt.Errorf("qcow2: L1 table: %w", blockdev.ErrCorrupt), code: api.CodeCorrupt, status: http.StatusBadRequest},
		{name: "permission", err: fmt.Errorf("open: %w", fs.ErrPermission), code: api.CodePermission, status: http.StatusForbidden},
		{name: "read-only fs", err: fmt.Errorf("open: %w", syscall.EROFS), code: api.CodePermission, status: http.StatusForbidden},
		{name: "passphrase required", err: fmt.Errorf("x: %w", stack.ErrNeedPassphrase), code: api.CodePassphraseRequired, status: http.StatusUnauthorized},
		{name: "wrong passphrase", err: fmt.Errorf("x: %w", luks.ErrWrongPassphrase), code: api.CodeWrongPassphrase, status: http.StatusUnauthorized},
		{name: "lease held", err: fmt.Errorf("s3://b/p: %w", &chunked.LeaseError{Holder: "host-a pid 7", Expires: time.Unix(0, 0)}), code: api.CodeLeaseHeld, status: http.StatusConflict},
		{name: "no s3 image", err: fmt.Errorf("s3://b/p: %w", chunked.ErrNoImage), code: api.CodeNoFile, status: http.StatusNotFound},
		{name: "api error kept", err: api.Errorf(api.CodeAlreadyOpen, "x is open"), code: api.CodeAlreadyOpen, status: http.StatusConflict},
		{name: "anything else", err: errors.New("boom"), code: api.CodeInternal, status: http.StatusInternalServerError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := toAPIError(tt.err)
			if e.Code != tt.code || e.Message != tt.err.Error() || statusOf(e.Code) != tt.status {
				t.Fatalf("toAPIError(%v) = %+v (status %d), want %s/%d", tt.err, e, statusOf(e.Code), tt.code, tt.status)
			}
		})
	}
}
