package ublk

import (
	"testing"
	"time"

	"vdisk/internal/vmtest"
)

// recoveryScript: a file-backed recoverable disk, a write acknowledged by
// fsync, kill -9 of the server, a read issued while no server runs, Recover
// in a new process; the read completes with the data, I/O goes on, and the
// file holds every acknowledged write. Then a disk that is not recoverable:
// kill -9 fails its I/O, and Delete removes it.
const recoveryScript = `#!/bin/sh
set -u
G=/tmp/g; mkdir -p $G
export VDISK_UBLK_GUEST=$G VDISK_UBLK_BACKING=$G/disk.img
hpid=
fail() { echo "FAIL: $*"; cat $G/helper.log 2>/dev/null; [ -n "$hpid" ] && kill $hpid; exit 1; }
step() { echo "== $(cut -d' ' -f1 /proc/uptime)s $*"; }
start() {
	rm -f $G/ready
	/share/ublk.test -test.run '^TestGuestServe$' -test.v >$G/helper.log 2>&1 &
	hpid=$!
	i=0
	until [ -s $G/ready ]; do
		i=$((i + 1)); [ $i -le 1200 ] || fail "no device within 120 s"
		kill -0 $hpid 2>/dev/null || fail "helper exited"
		sleep 0.1
	done
	DEV=$(cat $G/ready)
	cat $G/helper.log
}

step "serve a file, recoverable"
VDISK_UBLK_RECOVERABLE=1 start
dd if=/dev/urandom of=/tmp/a bs=64k count=16 2>/dev/null
dd if=/tmp/a of=$DEV bs=64k seek=100 oflag=direct conv=fsync 2>/dev/null || fail "write A"

step "kill -9 the server"
kill -9 $hpid; wait $hpid; hpid=
[ -b $DEV ] || fail "$DEV vanished with its server"
dd if=$DEV of=$G/during bs=64k skip=100 count=16 iflag=direct 2>/dev/null &
rpid=$!

step "recover in a new process"
VDISK_UBLK_RECOVER=${DEV#/dev/ublkb} start
wait $rpid || fail "the read issued without a server failed"
[ "$(md5sum <$G/during)" = "$(md5sum </tmp/a)" ] || fail "the read issued without a server returned wrong data"
dd if=/dev/urandom of=/tmp/b bs=64k count=16 2>/dev/null
dd if=/tmp/b of=$DEV bs=64k seek=300 oflag=direct conv=fsync 2>/dev/null || fail "write B after recovery"
got=$(dd if=$DEV bs=64k skip=300 count=16 iflag=direct 2>/dev/null | md5sum)
[ "$got" = "$(md5sum </tmp/b)" ] || fail "read B back"

step "close, check the file"
kill -TERM $hpid; wait $hpid; st=$?; hpid=
cat $G/helper.log
[ $st = 0 ] || fail "helper exit status $st"
[ ! -e $DEV ] || fail "$DEV still exists after Close"
[ "$(dd if=$G/disk.img bs=64k skip=100 count=16 2>/dev/null | md5sum)" = "$(md5sum </tmp/a)" ] || fail "A lost"
[ "$(dd if=$G/disk.img bs=64k skip=300 count=16 2>/dev/null | md5sum)" = "$(md5sum </tmp/b)" ] || fail "B lost"
step "not recoverable: kill -9 fails the I/O instead of hanging, Delete removes the device"
start
kill -9 $hpid; wait $hpid; hpid=
dd if=$DEV of=/dev/null bs=64k count=16 iflag=direct 2>/dev/null && fail "read without a server succeeded"
VDISK_UBLK_DELETE=${DEV#/dev/ublkb} /share/ublk.test -test.run '^TestGuestServe$' >$G/helper.log 2>&1 || fail "Delete"
[ ! -e $DEV ] || fail "$DEV still exists after Delete"
[ "$(dd if=$G/disk.img bs=64k skip=300 count=16 2>/dev/null | md5sum)" = "$(md5sum </tmp/b)" ] || fail "B lost"
step "done"
echo PASS
`

// TestUblkRecoveryInVM checks user recovery after kill -9 of the server.
func TestUblkRecoveryInVM(t *testing.T) {
	vmtest.Run(t, vmtest.Config{
		Script:   recoveryScript,
		Binaries: map[string]vmtest.Binary{"ublk.test": {Pkg: "vdisk/internal/ublk", Test: true}},
		NeedUblk: true,
		Timeout:  300 * time.Second,
	})
}
