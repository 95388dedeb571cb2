package kernel

import (
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
	"vdisk/internal/nbd"
	"vdisk/internal/vmtest"
)

// guestEnv, when set, makes TestGuestConnect run: the directory through
// which the guest script and the helper talk.
const guestEnv = "VDISK_NBD_GUEST"

// guestScript: netlink with two connections (raw O_DIRECT I/O, ext4,
// a reconfigure with new sockets while mounted, disconnect, e2fsck of the
// saved image), then the ioctl fallback, read-only, verifying the data.
const guestScript = `#!/bin/sh
set -u
G=/tmp/g; MNT=/mnt/n; mkdir -p $G $MNT
export VDISK_NBD_GUEST=$G
hpid=
fail() { echo "FAIL: $*"; cat $G/helper.log 2>/dev/null; umount $MNT 2>/dev/null; [ -n "$hpid" ] && kill $hpid; exit 1; }
step() { echo "== $(cut -d' ' -f1 /proc/uptime)s $*"; }
waitfile() {
	i=0
	until [ -s $1 ]; do
		i=$((i + 1)); [ $i -le 1200 ] || fail "no $1 within 120 s"
		kill -0 $hpid 2>/dev/null || fail "helper exited"
		sleep 0.1
	done
}
start() { # start MODE RO
	rm -f $G/ready $G/reconfigured
	VDISK_NBD_MODE=$1 VDISK_NBD_RO=$2 /share/kernel.test -test.run '^TestGuestConnect$' -test.v >$G/helper.log 2>&1 &
	hpid=$!
	waitfile $G/ready
	DEV=$(cat $G/ready); N=${DEV#/dev/}
	[ -b "$DEV" ] || fail "$DEV is not a block device"
}
stop() {
	kill -TERM $hpid; wait $hpid; st=$?; hpid=
	cat $G/helper.log
	[ $st = 0 ] || fail "helper exit status $st"
	[ "$(cat /sys/block/$N/size)" = 0 ] || fail "$DEV still has a size"
}

step "netlink connect, two sockets"
start netlink 0
echo "device $DEV: $(blockdev --getsize64 $DEV) bytes, logical $(blockdev --getss $DEV), ro $(blockdev --getro $DEV), backend $(cat /sys/block/$N/backend 2>/dev/null)"
[ "$(blockdev --getsize64 $DEV)" = 67108864 ] || fail "size"
[ "$(blockdev --getss $DEV)" = 4096 ] || fail "logical block size"
[ "$(blockdev --getro $DEV)" = 0 ] || fail "read-only flag on a writable disk"

` + vmtest.DeviceChecks + `
step "mkfs.ext4, mount, write, sync"
mkfs.ext4 -q -F $DEV || fail "mkfs.ext4"
mount -t ext4 $DEV $MNT || fail "mount"
dd if=/dev/urandom of=$MNT/big bs=64k count=64 2>/dev/null || fail "write big"
sync || fail "sync"

step "server restart: drop the connections, reconfigure with new sockets, keep using the mount"
kill -USR1 $hpid
waitfile $G/reconfigured
for i in 1 2 3 4 5; do echo "file $i" >$MNT/f$i; done
sync || fail "sync after reconfigure"
echo 3 >/proc/sys/vm/drop_caches
sum1=$(cd $MNT && md5sum big f1 f2 f3 f4 f5) || fail "read after reconfigure"
umount $MNT || fail "umount"

step "disconnect, e2fsck the saved image"
stop
e2fsck -fn $G/image >$G/fsck.log 2>&1 || { cat $G/fsck.log; fail "e2fsck"; }
tail -n1 $G/fsck.log
got=$(dd if=$G/image bs=64k skip=500 count=64 2>/dev/null | md5sum)

step "ioctl fallback, read-only, verify"
start ioctl 1
[ "$(blockdev --getro $DEV)" = 1 ] || fail "read-only flag not set"
mount -t ext4 -o ro,noload $DEV $MNT || fail "mount ro"
sum2=$(cd $MNT && md5sum big f1 f2 f3 f4 f5)
umount $MNT
[ "$sum1" = "$sum2" ] || fail "checksums differ after reconnect"
stop
step "done"
echo PASS
`

// TestKernelNBDInVM runs guestScript in the test VM against TestGuestConnect.
func TestKernelNBDInVM(t *testing.T) {
	vmtest.Run(t, vmtest.Config{
		Script:   guestScript,
		Binaries: map[string]vmtest.Binary{"kernel.test": {Pkg: "vdisk/internal/nbd/kernel", Test: true}},
		Timeout:  300 * time.Second,
	})
}

// TestGuestConnect is the guest half of TestKernelNBDInVM: it serves a
// memory device (loaded from $VDISK_NBD_GUEST/image) with the project's NBD
// server to the kernel client through Attach (two connections), writes the device path to $VDISK_NBD_GUEST/ready; on
// SIGUSR1 it drops its connections and attaches new ones (Reattach); on SIGTERM it disconnects and saves the memory to .../image.
// VDISK_NBD_BACKING names a file to serve instead of memory;
// VDISK_NBD_REATTACH=N reconfigures /dev/nbdN, whose server died, instead
// of connecting a new device.
func TestGuestConnect(t *testing.T) {
	dir := os.Getenv(guestEnv)
	if dir == "" {
		t.Skip("guest helper: runs only inside the test VM (TestKernelNBDInVM)")
	}
	forceIoctl = os.Getenv("VDISK_NBD_MODE") == "ioctl"
	if nl, err := Available(); err != nil || !nl {
		t.Fatalf("Available = %v, %v; want netlink", nl, err)
	}
	const size = 64 << 20
	var mem *blockdev.Mem
	var dev blockdev.Device
	img := filepath.Join(dir, "image")
	if backing := os.Getenv("VDISK_NBD_BACKING"); backing != "" {
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
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGUSR1)
	defer signal.Stop(sigs)

	ro := os.Getenv("VDISK_NBD_RO") == "1"
	srv := &nbd.Server{Exports: []nbd.Export{{Name: "disk", Device: dev, ReadOnly: ro}}}
	opt := AttachOptions{Export: "disk", Connections: 2, Index: -1, Timeout: time.Minute,
		DeadConnTimeout: 2 * time.Minute, Backend: "vdisk-test"}
	if re := os.Getenv("VDISK_NBD_REATTACH"); re != "" {
		// A restarted server: the old process died, its device waits.
		opt.Index, _ = strconv.Atoi(re)
		opt.Reattach = true
	}
	ctx := context.Background()
	start := time.Now()
	a, err := Attach(ctx, srv, opt)
	if err != nil {
		t.Fatal(err)
	}
	idx := a.Index()
	t.Logf("attached %s in %v (ioctl %v, reattach %v)", a.Path(), time.Since(start), forceIoctl, opt.Reattach)
	if !forceIoctl {
		st, err := Status(idx)
		if err != nil || !st.Connected {
			t.Fatalf("Status(%d) = %+v, %v; want connected", idx, st, err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "ready"), []byte(a.Path()), 0o644); err != nil {
		t.Fatal(err)
	}
	for sig := range sigs {
		if sig == syscall.SIGTERM {
			break
		}
		// A restarted server: the old connections die, new ones take over.
		a.stop()
		opt.Index, opt.Reattach = idx, true
		if a, err = Attach(ctx, srv, opt); err != nil {
			t.Fatal(err)
		}
		t.Logf("reattached %s with new connections", a.Path())
		if err := os.WriteFile(filepath.Join(dir, "reconfigured"), []byte("1"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if !forceIoctl {
		if err := waitDisconnected(idx); err != nil {
			t.Fatal(err)
		}
	}
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("server shutdown: %v", err)
	}
	if mem != nil {
		if err := saveImage(mem, img); err != nil {
			t.Fatal(err)
		}
	}
}

func waitDisconnected(idx int) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		st, err := Status(idx)
		if err != nil {
			return err
		}
		if !st.Connected {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s still connected a minute after Disconnect", Path(idx))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// saveImage writes dev's non-zero MiBs to a sparse file at path.
func saveImage(dev blockdev.Device, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(dev.Size()); err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for off := int64(0); off < dev.Size(); off += int64(len(buf)) {
		if _, err := dev.ReadAt(buf, off); err != nil {
			return err
		}
		if blockdev.IsZero(buf) {
			continue
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			return fmt.Errorf("save image: %w", err)
		}
	}
	return f.Close()
}
