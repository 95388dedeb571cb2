package loop

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Lookup returns the state of the loop device at path (e.g. /dev/loop3).
// A device with no backing file gives ErrNotAttached; a path that is not a
// loop device gives ErrNotLoop.
func Lookup(path string) (*Device, error) {
	n, err := numberOf(path)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("loop: %w", err)
	}
	defer f.Close()
	d, err := lookup(n, f)
	if err != nil {
		return nil, fmt.Errorf("loop: %s: %w", path, err)
	}
	d.Path = path
	return d, nil
}

// numberOf returns N for the block device node path of /dev/loopN, found
// through sysfs by the node's device number (so any node name works).
func numberOf(path string) (int, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("loop: %w", &fs.PathError{Op: "stat", Path: path, Err: err})
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK || unix.Major(st.Rdev) != loopMajor {
		return 0, fmt.Errorf("loop: %s: %w", path, ErrNotLoop)
	}
	link, err := os.Readlink(fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev)))
	if err != nil {
		return 0, fmt.Errorf("loop: %s: %w (%w)", path, ErrNotLoop, err)
	}
	n, ok := parseLoopName(filepath.Base(link))
	if !ok {
		return 0, fmt.Errorf("loop: %s: %w", path, ErrNotLoop)
	}
	return n, nil
}

// parseLoopName parses "loopN" (not a partition "loopNpM").
func parseLoopName(name string) (int, bool) {
	s, ok := strings.CutPrefix(name, "loop")
	if !ok || s == "" {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || strconv.Itoa(n) != s {
		return 0, false
	}
	return n, true
}

// lookup reads the state of loop device n through its open node f.
func lookup(n int, f *os.File) (*Device, error) {
	info, err := unix.IoctlLoopGetStatus64(int(f.Fd()))
	if errors.Is(err, unix.ENXIO) {
		return nil, ErrNotAttached
	}
	if err != nil {
		return nil, fmt.Errorf("get status: %w", err)
	}
	d := &Device{
		Path:         devPath(n),
		Number:       n,
		BackingDev:   info.Device,
		BackingInode: info.Inode,
		Offset:       info.Offset,
		SizeLimit:    info.Sizelimit,
		ReadOnly:     info.Flags&unix.LO_FLAGS_READ_ONLY != 0,
		DirectIO:     info.Flags&unix.LO_FLAGS_DIRECT_IO != 0,
		PartScan:     info.Flags&unix.LO_FLAGS_PARTSCAN != 0,
		AutoClear:    info.Flags&unix.LO_FLAGS_AUTOCLEAR != 0,
	}
	if d.Major, d.Minor, err = sysDevNumber(n); err != nil {
		return nil, err
	}
	if d.BackingFile, err = readSysfs(sysPath(n) + "/loop/backing_file"); err != nil {
		// Older kernels or a racing detach: fall back to the name the
		// attacher stored (truncated to 63 bytes).
		d.BackingFile = string(bytes.TrimRight(info.File_name[:], "\x00"))
	}
	size, err := unix.IoctlGetInt(int(f.Fd()), unix.BLKGETSIZE64)
	if err != nil {
		return nil, fmt.Errorf("get size: %w", err)
	}
	d.Size = int64(size)
	if d.BlockSize, err = unix.IoctlGetUint32(int(f.Fd()), unix.BLKSSZGET); err != nil {
		return nil, fmt.Errorf("get block size: %w", err)
	}
	return d, nil
}

// FindByBackingFile returns every attached loop device whose backing file
// is file: the same path, or the same inode (so hard links and renames
// match). The result is sorted by device number; no match is an empty slice
// and no error.
//
// Devices are compared by their sysfs backing path first, and only those
// that may match are queried: asking the kernel about a loop device on a
// FUSE file whose server is gone blocks or fails, and such a device must
// not stop the search for another file. A device backed by a file on a FUSE
// mount matches by path only.
func FindByBackingFile(file string) ([]*Device, error) {
	abs, err := filepath.Abs(file)
	if err != nil {
		return nil, fmt.Errorf("loop: %w", err)
	}
	var st unix.Stat_t
	haveInode := unix.Stat(abs, &st) == nil
	if canon, err := filepath.EvalSymlinks(abs); err == nil {
		abs = canon
	}
	entries, err := os.ReadDir(sysBlock)
	if err != nil {
		return nil, fmt.Errorf("loop: %w", err)
	}
	fuse := fuseMounts()
	var found []*Device
	for _, e := range entries {
		n, ok := parseLoopName(e.Name())
		if !ok {
			continue
		}
		backing, err := readSysfs(sysPath(n) + "/loop/backing_file")
		if err != nil {
			continue // not attached
		}
		samePath := strings.TrimSuffix(backing, " (deleted)") == abs
		if !samePath && (!haveInode || onMount(backing, fuse)) {
			continue
		}
		d, err := lookupNumber(n)
		if errors.Is(err, ErrNotAttached) || errors.Is(err, fs.ErrNotExist) {
			continue // detached meanwhile
		}
		if err != nil {
			if !samePath {
				continue // another file's device, in trouble of its own
			}
			return nil, err
		}
		if haveInode && (d.BackingDev != st.Dev || d.BackingInode != st.Ino) {
			continue
		}
		found = append(found, d)
	}
	slices.SortFunc(found, func(a, b *Device) int { return cmp.Compare(a.Number, b.Number) })
	return found, nil
}

// fuseMounts returns the mount points of the FUSE filesystems mounted now.
func fuseMounts() []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var mps []string
	for line := range strings.Lines(string(b)) {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f := strings.Fields(pre)
		if len(f) < 5 || !strings.HasPrefix(post, "fuse") {
			continue
		}
		mps = append(mps, unescapeMount(f[4]))
	}
	return mps
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// onMount reports whether path lies under one of the mount points.
func onMount(path string, mounts []string) bool {
	for _, m := range mounts {
		if path == m || strings.HasPrefix(path, strings.TrimSuffix(m, "/")+"/") {
			return true
		}
	}
	return false
}

// lookupNumber looks up loop device n by number.
func lookupNumber(n int) (*Device, error) {
	if err := ensureDevNode(n); err != nil {
		return nil, fmt.Errorf("loop: %w", err)
	}
	return Lookup(devPath(n))
}
