package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"vdisk/internal/image/imagetest"
	"vdisk/internal/vmtest"
)

// vmTimeout bounds one guest run: every step of vmScript under TCG on a
// loaded two-core host.
const vmTimeout = 540 * time.Second

// vmScript is the guest half of TestViaNBDInVM and TestViaUblkInVM, with
// @VIA@ replaced by nbd or ublk. The real vdisk binary, built static, runs
// in the guest; the CLI starts the daemon by itself (socket and state under
// /tmp). In order:
//
//   - the default path: with ublk_drv loaded a new raw image goes to ublk;
//     the nbd run first unloads ublk_drv, and the default is then nbd; info
//     says which and why;
//   - a new raw file --via @VIA@: size and read-only flag, an O_DIRECT
//     pattern written and read back, mkfs.ext4, mount, files, sync, umount,
//     close (the device goes away), reopen, mount, checksums, umount,
//     e2fsck -fn of the device and, after close, of the image;
//   - read-only: the flag reaches the kernel and writes fail;
//   - blkdiscard frees the blocks in the image file;
//   - a qcow2 image made with vdisk create: the same round trip;
//   - kill -9 of the daemon with a mounted disk: a read issued while no
//     daemon runs waits; the next CLI command starts a daemon, which takes
//     the same device back (nbd reconfigure, ublk user recovery); the read
//     completes, every fsync-acknowledged file is there, I/O goes on, and
//     after close the image is clean;
//   - kill -9, then the image moved away: the restarted daemon reports the
//     disk missing; close forgets it (and disconnects its /dev/nbdN);
//   - resize of an open disk: nbd grows in place (the new end reads and
//     writes), ublk refuses saying why;
//   - an ISO image: a read-only CD-ROM with 2048-byte blocks, mounted;
//   - SIGTERM: the daemon detaches the device, and a write it acknowledged
//     is in the image.
//
// Every open checks the record's device number and block size against the
// kernel's, and closing a mounted disk must fail as busy.
const vmScript = `#!/bin/sh
set -u
VIA=@VIA@
V=/share/vdisk
export VDISK_SOCKET=/tmp/vd/vdisk.sock VDISK_STATE_DIR=/tmp/vd/state
I=/tmp/img; MNT=/mnt/v
mkdir -p /tmp/vd $I $MNT
step() { echo "== $(cut -d' ' -f1 /proc/uptime)s $*"; }
fail() {
	echo "FAIL: $*"
	echo "--- daemon log"; cat /tmp/vd/vdisk-daemon.log 2>/dev/null
	umount $MNT 2>/dev/null
	exit 1
}
daemon_pid() {
	for p in /proc/[0-9]*; do
		case "$(tr '\0' ' ' <$p/cmdline 2>/dev/null)" in "$V daemon"*) echo ${p#/proc/}; return ;; esac
	done
}
# vopen FILE ARGS...: vdisk open; sets DEV and ID.
vopen() {
	f=$1; shift
	out=$($V open "$@" $f) || fail "vdisk open $* $f"
	DEV=${out% *}; ID=${out#* }
	[ -b "$DEV" ] || fail "$DEV is not a block device"
	case $DEV in /dev/nbd[0-9]*) got=nbd ;; /dev/ublkb[0-9]*) got=ublk ;; *) got=$DEV ;; esac
	echo "opened $f as $DEV (id $ID)"
	# The record has the kernel's numbers and block size for the device.
	j=$($V info --json $ID) || fail "vdisk info --json $ID"
	devno=$(printf '%d:%d' 0x$(stat -c %t $DEV) 0x$(stat -c %T $DEV))
	echo "$j" | grep -q "\"devno\": \"$devno\"" || fail "info devno is not $devno: $j"
	echo "$j" | grep -q "\"logical_block_size\": $(blockdev --getss $DEV)," || fail "info block size is not $(blockdev --getss $DEV): $j"
}
want_via() { # want_via VIA REASON-PREFIX
	[ "$got" = "$1" ] || fail "$DEV is not a $1 device"
	info=$($V info $DEV) || fail "vdisk info $DEV"
	echo "$info" | grep -q "^via: *$1\$" || fail "info does not say via $1: $info"
	echo "$info" | grep -q "^via reason: *$2" || fail "info does not give the reason '$2': $info"
	echo "$info" | grep "^via"
}
gone() { # the device of a closed disk soon has no size (nbd) or no node (ublk)
	i=0
	while :; do
		case $1 in
		/dev/nbd*) [ "$(cat /sys/block/${1#/dev/}/size)" = 0 ] && return ;;
		*) [ ! -e "$1" ] && return ;;
		esac
		i=$((i + 1)); [ $i -le 600 ] || fail "$1 still there 60 s after close"
		sleep 0.1
	done
}
writefiles() { # writefiles N: N files of random data, fsync'd, and their sums
	for i in $(seq 1 $1); do dd if=/dev/urandom of=$MNT/f$i bs=64k count=8 conv=fsync 2>/dev/null || fail "write f$i"; done
	(cd $MNT && md5sum f*) >/tmp/sums || fail "sums"
}
checkfiles() { (cd $MNT && md5sum -c /tmp/sums >/dev/null) || fail "checksums differ"; }
fsck_dev() { e2fsck -fn $1 >/tmp/fsck.log 2>&1 || { cat /tmp/fsck.log; fail "e2fsck -fn $1"; }; tail -n1 /tmp/fsck.log; }
roundtrip() { # roundtrip FILE OPENARGS...: 64M, writable, O_DIRECT pattern; mkfs, files, close, reopen, verify, fsck
	f=$1; shift
	vopen $f "$@"
	[ "$(blockdev --getsize64 $DEV)" = 67108864 ] || fail "size $(blockdev --getsize64 $DEV)"
	[ "$(blockdev --getro $DEV)" = 0 ] || fail "read-only flag on a writable disk"
	dd if=/tmp/pattern of=$DEV bs=64k seek=200 oflag=direct conv=fsync 2>/dev/null || fail "O_DIRECT write"
	got=$(dd if=$DEV bs=64k skip=200 count=32 iflag=direct 2>/dev/null | md5sum)
	[ "$got" = "$(md5sum </tmp/pattern)" ] || fail "O_DIRECT read back differs"
	mkfs.ext4 -q -F $DEV || fail "mkfs.ext4 $DEV"
	mount -t ext4 $DEV $MNT || fail "mount"
	writefiles 6
	sync || fail sync
	$V close $ID 2>/tmp/err && fail "close of a mounted disk succeeded"
	grep -q "is in use" /tmp/err || fail "close of a mounted disk: $(cat /tmp/err)"
	umount $MNT || fail umount
	$V close $ID || fail "close"
	gone $DEV
	vopen $f "$@"
	mount -t ext4 $DEV $MNT || fail "mount after reopen"
	checkfiles
	umount $MNT || fail "umount after reopen"
	fsck_dev $DEV
	$V close $ID || fail "close after reopen"
}

step "default path"
if [ $VIA = nbd ]; then
	rmmod ublk_drv || fail "rmmod ublk_drv"
	[ ! -e /dev/ublk-control ] || fail "/dev/ublk-control still there"
	vopen $I/default.img --size 16M
	want_via nbd "nbd: kernel nbd client present (netlink), no ublk module"
else
	vopen $I/default.img --size 16M
	want_via ublk "ublk: /dev/ublk-control present"
fi
$V list | grep -q "$ID .* $VIA " || fail "list: $($V list)"
$V list --json | grep -q '"via_reason": "'"$(echo "$info" | sed -n 's/^via reason: *//p')"'"' || fail "list --json lacks the reason: $($V list --json)"
$V close $I/default.img || fail "close the default disk by its file"
gone $DEV

step "raw --via $VIA: size, flags, O_DIRECT pattern"
vopen $I/a.img --via $VIA --size 64M
want_via $VIA "asked for (--via $VIA)"
[ "$(blockdev --getsize64 $DEV)" = 67108864 ] || fail "size $(blockdev --getsize64 $DEV)"
[ "$(blockdev --getro $DEV)" = 0 ] || fail "read-only flag on a writable disk"
dd if=/dev/urandom of=/tmp/pattern bs=64k count=32 2>/dev/null
dd if=/tmp/pattern of=$DEV bs=64k seek=100 oflag=direct conv=fsync 2>/dev/null || fail "O_DIRECT write"
got=$(dd if=$DEV bs=64k skip=100 count=32 iflag=direct 2>/dev/null | md5sum)
[ "$got" = "$(md5sum </tmp/pattern)" ] || fail "O_DIRECT read back differs"
$V close $ID || fail close
gone $DEV
[ "$(dd if=$I/a.img bs=64k skip=100 count=32 2>/dev/null | md5sum)" = "$(md5sum </tmp/pattern)" ] || fail "pattern not in the image after close"

step "raw --via $VIA: ext4 round trip"
roundtrip $I/a.img --via $VIA
fsck_dev $I/a.img

step "read-only"
vopen $I/a.img --via $VIA --read-only
[ "$(blockdev --getro $DEV)" = 1 ] || fail "read-only flag not set"
dd if=/dev/zero of=$DEV bs=4k count=1 oflag=direct 2>/dev/null && fail "a write to a read-only device succeeded"
$V close $ID || fail close

step "blkdiscard frees blocks in the image"
vopen $I/b.img --via $VIA --size 32M
dd if=/dev/urandom of=$DEV bs=1M count=16 oflag=direct conv=fsync 2>/dev/null || fail "fill"
before=$(stat -c %b $I/b.img)
blkdiscard $DEV || fail blkdiscard
sync
after=$(stat -c %b $I/b.img)
echo "image blocks: $before before, $after after blkdiscard"
[ $before -ge 32768 ] && [ $after -lt 4096 ] || fail "blkdiscard did not free the image's blocks ($before -> $after)"
$V close $ID || fail close

step "qcow2 --via $VIA"
$V create -f qcow2 --size 64M $I/q.qcow2 || fail "vdisk create qcow2"
roundtrip $I/q.qcow2 --via $VIA
$V info --json $I/q.qcow2 | grep -q '"format": "qcow2"' || fail "not qcow2: $($V info --json $I/q.qcow2)"

step "kill -9 the daemon with a mounted disk"
vopen $I/c.img --via $VIA --size 64M
mkfs.ext4 -q -F $DEV || fail mkfs
mount -t ext4 $DEV $MNT || fail mount
writefiles 4
pid=$(daemon_pid); [ -n "$pid" ] || fail "no daemon process"
kill -9 $pid
while kill -0 $pid 2>/dev/null; do sleep 0.1; done
echo "daemon $pid killed"
echo 3 >/proc/sys/vm/drop_caches
(cd $MNT && md5sum f* >/tmp/during) &
rpid=$!

step "restart: the next command starts a daemon that takes $DEV back"
list=$($V list) || fail "vdisk list after the kill"
echo "$list"
echo "$list" | grep -q "$ID *$DEV " || fail "$DEV not taken back"
[ -n "$(daemon_pid)" ] && [ "$(daemon_pid)" != $pid ] || fail "no new daemon"
grep -E "took back nbd device|recovered ublk device" /tmp/vd/vdisk-daemon.log || fail "the daemon did not take the device back"
wait $rpid || fail "a read issued while no daemon ran failed"
[ "$(cat /tmp/during)" = "$(cat /tmp/sums)" ] || fail "a read issued while no daemon ran returned wrong data"
checkfiles
dd if=/dev/urandom of=$MNT/after bs=64k count=8 conv=fsync 2>/dev/null || fail "write after the restart"
(cd $MNT && md5sum f* after) >/tmp/sums
umount $MNT || fail umount
$V close $ID || fail close
gone $DEV
fsck_dev $I/c.img
vopen $I/c.img --via $VIA
mount -t ext4 -o ro $DEV $MNT || fail "mount after the restart"
checkfiles
umount $MNT
$V close $ID || fail close

step "kill -9, and the image is gone at the restart: the disk is reported, close forgets it"
vopen $I/g.img --via $VIA --size 16M
pid=$(daemon_pid); kill -9 $pid
while kill -0 $pid 2>/dev/null; do sleep 0.1; done
mv $I/g.img $I/g.moved
list=$($V list) || fail "vdisk list"
echo "$list"
echo "$list" | grep -q "$ID *(missing) " || fail "the disk whose image is gone is not reported missing"
$V close $ID || fail "close of a missing disk"
$V list | grep -q "$ID" && fail "close did not forget the missing disk"
if [ $VIA = nbd ]; then
	gone $DEV # the daemon disconnected the device it can no longer serve
	n=$(dd if=$DEV bs=4k count=1 iflag=direct 2>/dev/null | wc -c)
	[ "$n" = 0 ] || fail "$DEV still reads ($n bytes)"
fi

step "resize of an open disk: nbd grows in place, ublk refuses"
vopen $I/r.img --via $VIA --size 16M
dd if=/tmp/pattern of=$DEV bs=64k seek=100 oflag=direct 2>/dev/null || fail "write before the resize"
if [ $VIA = nbd ]; then
	$V resize $I/r.img +16M || fail "resize of an open nbd disk"
	[ "$(blockdev --getsize64 $DEV)" = 33554432 ] || fail "$DEV is $(blockdev --getsize64 $DEV) bytes after the resize"
	dd if=/tmp/pattern of=$DEV bs=64k seek=480 oflag=direct 2>/dev/null || fail "write at the new end"
	[ "$(dd if=$DEV bs=64k skip=480 count=32 iflag=direct 2>/dev/null | md5sum)" = "$(md5sum </tmp/pattern)" ] || fail "the new end reads back wrong"
else
	out=$($V resize $I/r.img +16M 2>&1) && fail "resize of an open ublk disk succeeded"
	echo "$out" | grep -q "ublk" || fail "the ublk refusal does not say why: $out"
fi
[ "$(dd if=$DEV bs=64k skip=100 count=32 iflag=direct 2>/dev/null | md5sum)" = "$(md5sum </tmp/pattern)" ] || fail "data before the resize lost"
$V close $ID || fail close

step "an ISO 9660 image: a read-only CD-ROM with 2048-byte blocks the kernel mounts"
vopen /share/test.iso --via $VIA
[ "$(blockdev --getro $DEV)" = 1 ] || fail "the ISO's $DEV is not read-only"
[ "$(blockdev --getss $DEV)" = 2048 ] || fail "the ISO's $DEV has $(blockdev --getss $DEV)-byte blocks, not 2048"
dd if=/tmp/pattern of=$DEV bs=64k oflag=direct 2>/dev/null && fail "a write to the ISO's $DEV succeeded"
mount -t iso9660 -o ro $DEV $MNT || fail "mount the ISO"
cmp $MNT/hello.txt /share/hello.txt || fail "hello.txt in the ISO differs"
cmp $MNT/sub/pattern /share/isopattern || fail "sub/pattern in the ISO differs"
umount $MNT
$V close $ID || fail close
gone $DEV

step "SIGTERM: the daemon flushes and detaches every disk"
vopen $I/e.img --via $VIA --size 16M
dd if=/tmp/pattern of=$DEV bs=64k seek=10 oflag=direct 2>/dev/null || fail "write before SIGTERM"
pid=$(daemon_pid)
kill -TERM $pid
i=0; while kill -0 $pid 2>/dev/null; do i=$((i + 1)); [ $i -le 600 ] || fail "daemon alive 60 s after SIGTERM"; sleep 0.1; done
gone $DEV
[ "$(dd if=$I/e.img bs=64k skip=10 count=32 2>/dev/null | md5sum)" = "$(md5sum </tmp/pattern)" ] || fail "write lost at SIGTERM"

step "done"
echo PASS
`

func runViaInVM(t *testing.T, via string, needUblk bool) {
	start := time.Now()
	vmtest.Run(t, vmtest.Config{
		Script:   strings.ReplaceAll(vmScript, "@VIA@", via),
		Binaries: map[string]vmtest.Binary{"vdisk": {Pkg: "vdisk/cmd/vdisk"}},
		Files:    isoFiles(t),
		Timeout:  vmTimeout,
		NeedUblk: needUblk,
	})
	t.Logf("--via %s in the VM: %v including the build", via, time.Since(start).Round(100*time.Millisecond))
}

// TestViaNBDInVM runs vmScript with --via nbd in the test VM: /dev/nbdN
// served by the daemon, default nbd without ublk_drv, kill -9 and
// reconfigure.
func TestViaNBDInVM(t *testing.T) { runViaInVM(t, "nbd", false) }

// TestViaUblkInVM runs vmScript with --via ublk in the test VM:
// /dev/ublkbN served by the daemon, default ublk, kill -9 and user
// recovery.
func TestViaUblkInVM(t *testing.T) { runViaInVM(t, "ublk", true) }

// isoFiles makes the ISO image the guest mounts (genisoimage, on the
// host) and the files to compare it with, hello.txt and isopattern (the
// ISO's sub/pattern).
func isoFiles(t *testing.T) map[string][]byte {
	imagetest.NeedTool(t, "genisoimage")
	src := t.TempDir()
	hello := []byte("hello from an ISO 9660 image served by vdisk\n")
	if err := os.WriteFile(filepath.Join(src, "hello.txt"), hello, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(src, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "sub", "pattern"), isoPattern(), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "test.iso")
	sh(t, "genisoimage", "-quiet", "-R", "-J", "-V", "VDISKVM", "-o", img, src)
	return map[string][]byte{"test.iso": readFile(t, img), "hello.txt": hello, "isopattern": isoPattern()}
}

// isoPattern is sub/pattern: the bytes 0..255 repeated, 300 KiB.
func isoPattern() []byte {
	b := make([]byte, 300<<10)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}
