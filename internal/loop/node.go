package loop

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

const (
	// loopMajor is the block major number of loop devices (LOOP_MAJOR).
	loopMajor = 7
	// controlPath is the loop control device node.
	controlPath = "/dev/loop-control"
	// controlSysDev holds the control device's major:minor in sysfs.
	controlSysDev = "/sys/class/misc/loop-control/dev"
	// sysBlock is where the kernel lists block devices.
	sysBlock = "/sys/block"
	// maxSysfsValue bounds reads of one sysfs attribute.
	maxSysfsValue = 8192
)

// devPath returns the device node path of loop device n.
func devPath(n int) string { return "/dev/loop" + strconv.Itoa(n) }

// sysPath returns the sysfs directory of loop device n.
func sysPath(n int) string { return sysBlock + "/loop" + strconv.Itoa(n) }

// readSysfs reads one sysfs attribute and trims its trailing newline.
func readSysfs(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b := make([]byte, maxSysfsValue)
	n, err := f.Read(b)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return strings.TrimRight(string(b[:n]), "\n"), nil
}

// parseDevNumber parses "major:minor" as sysfs prints it.
func parseDevNumber(s string) (major, minor uint32, err error) {
	a, b, ok := strings.Cut(strings.TrimSpace(s), ":")
	if !ok {
		return 0, 0, fmt.Errorf("device number %q: want major:minor", s)
	}
	ma, err1 := strconv.ParseUint(a, 10, 32)
	mi, err2 := strconv.ParseUint(b, 10, 32)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("device number %q: want major:minor", s)
	}
	return uint32(ma), uint32(mi), nil
}

// sysDevNumber returns loop device n's major:minor from sysfs.
func sysDevNumber(n int) (major, minor uint32, err error) {
	s, err := readSysfs(sysPath(n) + "/dev")
	if err != nil {
		return 0, 0, fmt.Errorf("loop%d: %w", n, err)
	}
	return parseDevNumber(s)
}

// ensureNode makes sure path is a device node of the given type and number,
// creating it (mode 0660) when missing, as udev would. Containers without
// udev need this: the kernel creates loop devices on demand but nobody
// creates their nodes. An existing node with another type or number is an
// error, never replaced.
func ensureNode(path string, mode uint32, major, minor uint32) error {
	want := unix.Mkdev(major, minor)
	var st unix.Stat_t
	err := unix.Stat(path, &st)
	if err == nil {
		if st.Mode&unix.S_IFMT != mode || st.Rdev != want {
			return fmt.Errorf("%s exists but is not device %d:%d", path, major, minor)
		}
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if err := unix.Mknod(path, mode|0o660, int(want)); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create device node %s: %w", path, err)
	}
	return nil
}

// openControl opens /dev/loop-control, creating its node when missing.
func openControl() (*os.File, error) {
	if s, err := readSysfs(controlSysDev); err == nil {
		ma, mi, err := parseDevNumber(s)
		if err != nil {
			return nil, fmt.Errorf("loop-control: %w", err)
		}
		if err := ensureNode(controlPath, unix.S_IFCHR, ma, mi); err != nil {
			return nil, err
		}
	}
	f, err := os.OpenFile(controlPath, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s (is the loop module loaded?): %w", controlPath, err)
	}
	return f, nil
}

// ensureDevNode makes sure /dev/loopN exists for loop device n.
func ensureDevNode(n int) error {
	ma, mi, err := sysDevNumber(n)
	if err != nil {
		return err
	}
	return ensureNode(devPath(n), unix.S_IFBLK, ma, mi)
}
