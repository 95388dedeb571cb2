package kernel

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Resize changes the size of the connected /dev/nbd<index> to size bytes
// while it is in use: NBD_CMD_RECONFIGURE with NBD_ATTR_SIZE_BYTES for a
// device configured over netlink, NBD_SET_SIZE for one configured with
// ioctls (the kernel lets each kind be changed only its own way). It
// checks that the kernel took the new size. backend is the identifier the
// device was connected with (Config.Backend), which the kernel wants
// repeated.
func Resize(index int, backend string, size int64) error {
	if index < 0 || size <= 0 || size%512 != 0 {
		return fmt.Errorf("nbd: resize %d to %d bytes", index, size)
	}
	f, err := dialFamily()
	switch {
	case errors.Is(err, errNoFamily):
		err = resizeIoctl(index, size)
	case err != nil:
		return err
	default:
		err = resizeNetlink(f, index, backend, size)
		f.close()
	}
	if err != nil {
		return err
	}
	got, err := sysfsSize(index)
	if err != nil {
		return err
	}
	if got != size {
		return fmt.Errorf("nbd: %s is %d bytes after a resize to %d: %w (this kernel cannot resize a connected device)", Path(index), got, size, ErrUnavailable)
	}
	return nil
}

func resizeNetlink(f *family, index int, backend string, size int64) error {
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(attrIndex, uint32(index))
	if backend != "" {
		ae.String(attrBackend, backend)
	}
	ae.Uint64(attrSizeBytes, uint64(size))
	attrs, err := ae.Encode()
	if err != nil {
		return err
	}
	if _, err := f.execute(cmdReconfigure, attrs, true); err != nil {
		if errors.Is(err, unix.EINVAL) {
			// A device set up with ioctls refuses netlink changes.
			if ierr := resizeIoctl(index, size); ierr == nil {
				return nil
			}
		}
		return fmt.Errorf("nbd: NBD_CMD_RECONFIGURE %s to %d bytes: %w", Path(index), size, err)
	}
	return nil
}

func resizeIoctl(index int, size int64) error {
	d, err := openDev(index)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := unix.IoctlSetInt(int(d.Fd()), ioctlSetSize, int(size)); err != nil {
		return fmt.Errorf("nbd: NBD_SET_SIZE on %s: %w", d.Name(), err)
	}
	return nil
}

// sysfsSize reads the size the kernel has for /dev/nbd<index>.
func sysfsSize(index int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/sys/block/nbd%d/size", index))
	if err != nil {
		return 0, fmt.Errorf("nbd: %w", err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("nbd: size of %s: %w", Path(index), err)
	}
	return n * 512, nil
}
