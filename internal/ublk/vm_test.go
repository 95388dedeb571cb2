package ublk

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"vdisk/internal/blockdev"
	"vdisk/internal/blockdev/blockdevtest"
	"vdisk/internal/vmtest"
)

// guestEnv, when set, makes TestGuestServe run: it is the directory through
// which the guest script and the helper talk.
const guestEnv = "VDISK_UBLK_GUEST"

// guestScript drives /dev/ublkbN in the guest: raw O_DIRECT I/O, ext4,
// stop, a read-only restart that verifies the data, and an e2fsck of the
// image the helper saved.
const guestScript = `#!/bin/sh
set -u
G=/tmp/g; MNT=/mnt/u; mkdir -p $G $MNT
export VDISK_UBLK_GUEST=$G
hpid=
fail() { echo "FAIL: $*"; cat $G/helper.log 2>/dev/null; umount $MNT 2>/dev/null; [ -n "$hpid" ] && kill $hpid; exit 1; }
step() { echo "== $(cut -d' ' -f1 /proc/uptime)s $*"; }
start() { # start [1 = read-only]: serve the saved image (or a new one), wait for the device
	rm -f $G/ready
	VDISK_UBLK_RO=${1:-} /share/ublk.test -test.run '^TestGuestServe$' -test.v >$G/helper.log 2>&1 &
	hpid=$!
	i=0
	until [ -s $G/ready ]; do
		i=$((i + 1)); [ $i -le 1200 ] || fail "no device within 120 s"
		kill -0 $hpid 2>/dev/null || fail "helper exited"
		sleep 0.1
	done
	DEV=$(cat $G/ready)
	[ -b "$DEV" ] || fail "$DEV is not a block device"
}
stop() {
	kill -TERM $hpid; wait $hpid; st=$?; hpid=
	cat $G/helper.log
	[ $st = 0 ] || fail "helper exit status $st"
	[ -f $G/image ] || fail "no image saved"
}

step "serve a 64 MiB memory device (with two one-shot faults)"
VDISK_UBLK_FAULTS=1 start
echo "device $DEV: $(blockdev --getsize64 $DEV) bytes, logical $(blockdev --getss $DEV), ro $(blockdev --getro $DEV)"
[ "$(blockdev --getsize64 $DEV)" = 67108864 ] || fail "size"
[ "$(blockdev --getro $DEV)" = 0 ] || fail "read-only flag set on a writable disk"

step "device errors reach the reader and the writer, and pass"
dd if=$DEV of=/dev/null bs=4k skip=12288 count=1 iflag=direct 2>/dev/null && fail "read of a failing range succeeded"
dd if=$DEV of=/dev/null bs=4k skip=12288 count=1 iflag=direct 2>/dev/null || fail "read after a one-shot fault failed"
dd if=/dev/zero of=$DEV bs=4k seek=12544 count=1 oflag=direct 2>/dev/null && fail "write of a failing range succeeded"
dd if=/dev/zero of=$DEV bs=4k seek=12544 count=1 oflag=direct 2>/dev/null || fail "write after a one-shot fault failed"

` + vmtest.DeviceChecks + `
step "mkfs.ext4, mount, write, sync, umount"
mkfs.ext4 -q -F -E nodiscard $DEV || fail "mkfs.ext4"
mount -t ext4 $DEV $MNT || fail "mount"
dd if=/dev/urandom of=$MNT/big bs=64k count=64 2>/dev/null || fail "write big"
for i in 1 2 3 4 5; do echo "file $i" >$MNT/f$i; done
sum1=$(cd $MNT && md5sum big f1 f2 f3 f4 f5)
sync || fail "sync"
umount $MNT || fail "umount"

step "stop the server (STOP_DEV, DEL_DEV), check the saved image"
stop
[ ! -e $DEV ] || fail "$DEV still exists after Close"
e2fsck -fn $G/image >$G/fsck.log 2>&1 || { cat $G/fsck.log; fail "e2fsck"; }
tail -n1 $G/fsck.log

step "serve the image read-only, verify"
start 1
[ "$(blockdev --getro $DEV)" = 1 ] || fail "read-only flag not set"
mount -t ext4 -o ro,noload $DEV $MNT || fail "mount ro"
sum2=$(cd $MNT && md5sum big f1 f2 f3 f4 f5)
umount $MNT
[ "$sum1" = "$sum2" ] || fail "checksums differ after restart"
dd if=/tmp/pattern of=$DEV bs=4k count=1 oflag=direct 2>/dev/null && fail "write to a read-only disk succeeded"
stop
step "done"
echo PASS
`

// TestUblkInVM runs guestScript in the test VM against TestGuestServe.
func TestUblkInVM(t *testing.T) {
	vmtest.Run(t, vmtest.Config{
		Script:   guestScript,
		Binaries: map[string]vmtest.Binary{"ublk.test": {Pkg: "vdisk/internal/ublk", Test: true}},
		NeedUblk: true,
		Timeout:  300 * time.Second,
	})
}

// TestGuestServe is the guest half of the VM tests. It serves a device
// through ublk, writes the device path to $VDISK_UBLK_GUEST/ready, and on
// SIGTERM closes the disk. The device is a file when VDISK_UBLK_BACKING
// names one, else memory loaded from and saved to $VDISK_UBLK_GUEST/image.
// VDISK_UBLK_FAULTS=1 makes one read and one write fail (memory only),
// VDISK_UBLK_RO=1 serves read-only, VDISK_UBLK_RECOVERABLE=1 asks for user
// recovery, VDISK_UBLK_RECOVER=N recovers /dev/ublkbN instead of adding a
// device, VDISK_UBLK_DELETE=N deletes /dev/ublkbN and returns.
func TestGuestServe(t *testing.T) {
	dir := os.Getenv(guestEnv)
	if dir == "" {
		t.Skip("guest helper: runs only inside the test VM (TestUblkInVM)")
	}
	const size = 64 << 20
	var dev blockdev.Device
	var mem *blockdev.Mem
	img := filepath.Join(dir, "image")
	if backing := os.Getenv("VDISK_UBLK_BACKING"); backing != "" {
		f, err := blockdev.OpenFile(backing, blockdev.FileOptions{Create: true, Size: size})
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		dev = f
	} else {
		mem = blockdev.NewMem(size)
		if b, err := os.ReadFile(img); err == nil {
			if _, err := mem.WriteAt(b, 0); err != nil {
				t.Fatal(err)
			}
		}
		dev = mem
		if os.Getenv("VDISK_UBLK_FAULTS") == "1" {
			// One failing read at 48 MiB and one failing write at 49 MiB.
			dev = blockdevtest.NewFaulty(mem,
				blockdevtest.Rule{Ops: blockdevtest.OpRead, Off: 48 << 20, Len: 4096, Times: 1},
				blockdevtest.Rule{Ops: blockdevtest.OpWrite, Off: 49 << 20, Len: 4096, Times: 1},
			).Device()
		}
	}
	if id := os.Getenv("VDISK_UBLK_DELETE"); id != "" {
		n, _ := strconv.Atoi(id)
		if err := Delete(n); err != nil {
			t.Fatal(err)
		}
		return
	}
	feat, err := Available()
	if err != nil || feat&featCmdIoctlEncode == 0 {
		t.Fatalf("Available = %#x, %v; want the 6.12 features", feat, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	opt := Options{Queues: 2, Depth: 32, MaxIO: 256 << 10}
	opt.ReadOnly, _ = strconv.ParseBool(os.Getenv("VDISK_UBLK_RO"))
	opt.Recoverable, _ = strconv.ParseBool(os.Getenv("VDISK_UBLK_RECOVERABLE"))
	start := time.Now()
	var disk *Disk
	if id := os.Getenv("VDISK_UBLK_RECOVER"); id != "" {
		n, _ := strconv.Atoi(id)
		disk, err = Recover(ctx, n, dev, opt)
	} else {
		disk, err = Serve(ctx, dev, opt)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("serving %s in %v, features %#x, recoverable %v", disk.Path(), time.Since(start), disk.Features(), disk.Recoverable())
	if opt.Recoverable && !disk.Recoverable() {
		t.Fatal("the kernel offers user recovery, but the disk is not recoverable")
	}
	if err := os.WriteFile(filepath.Join(dir, "ready"), []byte(disk.Path()), 0o644); err != nil {
		t.Fatal(err)
	}
	<-ctx.Done()
	start = time.Now()
	if err := disk.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	t.Logf("closed in %v", time.Since(start))
	if err := disk.Close(); err != ErrClosed {
		t.Errorf("second Close = %v, want ErrClosed", err)
	}
	if mem != nil {
		if err := saveImage(mem, img); err != nil {
			t.Fatal(err)
		}
	}
}

// saveImage writes m's data extents to a sparse file at path.
func saveImage(m *blockdev.Mem, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(m.Size()); err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for off := int64(0); off < m.Size(); off += int64(len(buf)) {
		if _, err := m.ReadAt(buf, off); err != nil {
			return err
		}
		if bytes.Count(buf, []byte{0}) == len(buf) {
			continue
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			return fmt.Errorf("save image: %w", err)
		}
	}
	return f.Close()
}
