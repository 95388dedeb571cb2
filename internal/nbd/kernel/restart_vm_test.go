package kernel

import (
	"testing"
	"time"

	"vdisk/internal/vmtest"
)

// restartScript: a file-backed device with a dead-connection timeout, a
// write acknowledged by fsync, kill -9 of the server, a read issued while
// no server runs, a new process that reconfigures the same /dev/nbdN; the
// read completes with the data, I/O goes on, and the file holds every
// acknowledged write.
const restartScript = `#!/bin/sh
set -u
G=/tmp/g; mkdir -p $G
export VDISK_NBD_GUEST=$G VDISK_NBD_BACKING=$G/disk.img VDISK_NBD_MODE=netlink VDISK_NBD_RO=0
hpid=
fail() { echo "FAIL: $*"; cat $G/helper.log 2>/dev/null; [ -n "$hpid" ] && kill $hpid; exit 1; }
step() { echo "== $(cut -d' ' -f1 /proc/uptime)s $*"; }
start() {
	rm -f $G/ready
	/share/kernel.test -test.run '^TestGuestConnect$' -test.v >$G/helper.log 2>&1 &
	hpid=$!
	i=0
	until [ -s $G/ready ]; do
		i=$((i + 1)); [ $i -le 1200 ] || fail "no device within 120 s"
		kill -0 $hpid 2>/dev/null || fail "helper exited"
		sleep 0.1
	done
	DEV=$(cat $G/ready); N=${DEV#/dev/}
	cat $G/helper.log
}

step "connect a file"
start
dd if=/dev/urandom of=/tmp/a bs=64k count=16 2>/dev/null
dd if=/tmp/a of=$DEV bs=64k seek=100 oflag=direct conv=fsync 2>/dev/null || fail "write A"

step "kill -9 the server"
kill -9 $hpid; wait $hpid; hpid=
dd if=$DEV of=$G/during bs=64k skip=100 count=16 iflag=direct 2>/dev/null &
rpid=$!

step "a new process reconfigures $DEV"
VDISK_NBD_REATTACH=${N#nbd} start
wait $rpid || fail "the read issued without a server failed"
[ "$(md5sum <$G/during)" = "$(md5sum </tmp/a)" ] || fail "the read issued without a server returned wrong data"
dd if=/dev/urandom of=/tmp/b bs=64k count=16 2>/dev/null
dd if=/tmp/b of=$DEV bs=64k seek=300 oflag=direct conv=fsync 2>/dev/null || fail "write B after the restart"
got=$(dd if=$DEV bs=64k skip=300 count=16 iflag=direct 2>/dev/null | md5sum)
[ "$got" = "$(md5sum </tmp/b)" ] || fail "read B back"

step "disconnect, check the file"
kill -TERM $hpid; wait $hpid; st=$?; hpid=
cat $G/helper.log
[ $st = 0 ] || fail "helper exit status $st"
[ "$(cat /sys/block/$N/size)" = 0 ] || fail "$DEV still has a size"
[ "$(dd if=$G/disk.img bs=64k skip=100 count=16 2>/dev/null | md5sum)" = "$(md5sum </tmp/a)" ] || fail "A lost"
[ "$(dd if=$G/disk.img bs=64k skip=300 count=16 2>/dev/null | md5sum)" = "$(md5sum </tmp/b)" ] || fail "B lost"
step "done"
echo PASS
`

// TestKernelNBDRestartInVM checks that a restarted server takes its device
// back with Reconfigure after kill -9, losing no acknowledged write.
func TestKernelNBDRestartInVM(t *testing.T) {
	vmtest.Run(t, vmtest.Config{
		Script:   restartScript,
		Binaries: map[string]vmtest.Binary{"kernel.test": {Pkg: "vdisk/internal/nbd/kernel", Test: true}},
		Timeout:  300 * time.Second,
	})
}
