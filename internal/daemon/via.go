package daemon

import (
	"errors"
	"fmt"
	"strings"

	"vdisk/internal/api"
	"vdisk/internal/nbd/kernel"
	"vdisk/internal/ublk"
)

// kernelPaths is what the running kernel offers the attach paths that need
// a module: nil errors mean ublk_drv (/dev/ublk-control) and the nbd client
// answer. Loop and FUSE are not probed: they are the fallback, and their
// own attach reports what is missing.
type kernelPaths struct {
	ublk    error
	nbd     error
	netlink bool // the nbd client speaks netlink (restart needs it)
}

// probeKernel asks the kernel which module-backed paths it has. It is cheap
// (it opens /dev/ublk-control and a generic netlink socket) and runs at
// every open that does not name a path, so a module loaded later is used.
func probeKernel() kernelPaths {
	var p kernelPaths
	_, p.ublk = ublk.Available()
	p.netlink, p.nbd = kernel.Available()
	return p
}

// chooseVia picks the attach path of an image of kind (its format, see
// imageKind) when the request names none, and says why: ublk when the
// kernel has it, then nbd, then a loop device on the file when the stack is
// a plain file (raw, not encrypted, local), else a loop device on a FUSE
// file.
func chooseVia(kind string, plainFile bool, p kernelPaths) (via, reason string) {
	switch {
	case p.ublk == nil:
		return api.ViaUblk, "ublk: /dev/ublk-control present"
	case p.nbd == nil:
		how := "ioctl"
		if p.netlink {
			how = "netlink"
		}
		return api.ViaNBD, fmt.Sprintf("nbd: kernel nbd client present (%s), %s", how, missing(p.ublk, "ublk"))
	}
	why := "no ublk or nbd module on this kernel"
	if !errors.Is(p.ublk, ublk.ErrUnavailable) || !errors.Is(p.nbd, kernel.ErrUnavailable) {
		why = missing(p.ublk, "ublk") + ", " + missing(p.nbd, "nbd")
	}
	if plainFile {
		return api.ViaLoop, "loop: raw image, " + why
	}
	return api.ViaFUSE, fmt.Sprintf("fuse: %s image, %s", kind, why)
}

// missing says why a module-backed path is out: the module is not there,
// or (rarely) the probe failed for another reason, which it quotes.
func missing(err error, name string) string {
	if errors.Is(err, ublk.ErrUnavailable) || errors.Is(err, kernel.ErrUnavailable) {
		return "no " + name + " module"
	}
	return fmt.Sprintf("%s unusable (%v)", name, err)
}

// askedReason is the reason of a path the request named.
func askedReason(via string) string { return "asked for (--via " + via + ")" }

// checkVia fails with CodeViaUnavailable, naming the missing module, when
// via needs a module the kernel does not have.
func checkVia(via string, p kernelPaths) error {
	var err error
	switch via {
	case api.ViaUblk:
		err = p.ublk
	case api.ViaNBD:
		err = p.nbd
	}
	if err != nil {
		// "ublk: ublk is not available: ..." reads better without the
		// package prefix after "--via ublk:".
		return api.Errorf(api.CodeViaUnavailable, "--via %s: %s", via, strings.TrimPrefix(err.Error(), "ublk: "))
	}
	return nil
}
