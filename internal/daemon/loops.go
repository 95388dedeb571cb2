package daemon

import (
	"os"
	"path/filepath"
	"strings"

	"vdisk/internal/loop"
)

// sysLoopBacking matches the backing file attribute of every loop device.
const sysLoopBacking = "/sys/block/loop*/loop/backing_file"

// findLoops returns the loop devices attached to file, a canonical path,
// as loop.FindByBackingFile does. That lookup fails as a whole when any
// loop device on the host cannot report its state (one over a FUSE file
// whose server died answers ENOTCONN); then findLoops scans again by path,
// reads only the devices whose backing file is file, and skips, with a
// warning, those whose state cannot be read. One broken device elsewhere
// must not stop a restore or hide a conflicting attach.
func (d *Daemon) findLoops(file string) []*loop.Device {
	devs, err := loop.FindByBackingFile(file)
	if err == nil {
		return devs
	}
	d.log.Debug("loop lookup by inode failed; scanning by path", "file", file, "err", err)
	names, _ := filepath.Glob(sysLoopBacking) // the pattern is valid
	var out []*loop.Device
	for _, name := range names {
		b, err := os.ReadFile(name)
		if err != nil {
			continue // detached meanwhile
		}
		if strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)") != file {
			continue
		}
		dev := "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(name)))
		l, err := loop.Lookup(dev)
		if err != nil {
			d.log.Warn("cannot read the state of a loop device attached to the image", "device", dev, "file", file, "err", err)
			continue
		}
		out = append(out, l)
	}
	return out
}
