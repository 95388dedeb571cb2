#!/usr/bin/env bash
# The main job, end to end: a file becomes a disk, gets a filesystem, holds
# data, goes away, and comes back with the data intact; then the same image
# is served over NBD to a real NBD client. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh >/dev/null
bin=$(mktemp -d /tmp/vdisk-demo.XXXXXX)
export VDISK_SOCKET=$bin/vdisk.sock VDISK_STATE_DIR=$bin/state
mnt=$bin/mnt
img=$bin/disk.img
cleanup() {
	mountpoint -q "$mnt" 2>/dev/null && umount "$mnt"
	[ -x "$bin/vdisk" ] && "$bin/vdisk" close --all >/dev/null 2>&1 || true
	[ -f "$bin/serve.pid" ] && kill "$(cat "$bin/serve.pid")" 2>/dev/null || true
	pkill -f "$bin/vdisk daemon" 2>/dev/null || true
	rm -rf "$bin"
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

go build -o "$bin/vdisk" ./cmd/vdisk
v=$bin/vdisk
mkdir -p "$mnt"

step "open a new 100 MiB disk (the file is created, sparse)"
printf '$ %s\n' "$v open $img"
read -r dev id < <("$v" open "$img")
echo "$dev $id"
show "$v" list
step "make a filesystem on $dev, mount it, write a file"
show mkfs.ext4 -q -F "$dev"
show mount "$dev" "$mnt"
head -c 8M /dev/urandom >"$mnt/data.bin"
sum=$(sha256sum <"$mnt/data.bin" | cut -d' ' -f1)
echo "wrote data.bin, sha256 $sum"
show umount "$mnt"
step "close the disk: every acknowledged write is now in $img"
show "$v" close "$img"
ls -ls "$img"

step "open it again and read the file back"
printf '$ %s\n' "$v open $img"
read -r dev id2 < <("$v" open "$img")
echo "$dev $id2 (the same id: $([ "$id" = "$id2" ] && echo yes || echo NO))"
show mount "$dev" "$mnt"
got=$(sha256sum <"$mnt/data.bin" | cut -d' ' -f1)
show umount "$mnt"
show "$v" info "$img"
show "$v" close "$img"
[ "$got" = "$sum" ] && echo "data.bin reads back identical: $got" || { echo "MISMATCH: $got != $sum" >&2; exit 1; }
show e2fsck -fn "$img" >/dev/null && echo "e2fsck: clean"

step "serve the same image over NBD and read it with real NBD clients"
"$v" serve --unix "$bin/nbd.sock" --read-only "$img" &
echo $! >"$bin/serve.pid"
for _ in $(seq 50); do [ -S "$bin/nbd.sock" ] && break; sleep 0.1; done
show nbdinfo "nbd+unix:///?socket=$bin/nbd.sock"
show nbdcopy "nbd+unix:///?socket=$bin/nbd.sock" "$bin/copy.img"
cmp "$img" "$bin/copy.img" && echo "nbdcopy: the copy over NBD equals the image"
show qemu-img compare -f raw -F raw "$img" "nbd+unix:///?socket=$bin/nbd.sock"
echo; echo "demo: all steps passed"
