#!/usr/bin/env bash
# fio directly on the block device of each attach path, side by side in one
# run on the same image of random data: `vdisk open --via loop`, `vdisk open
# --via fuse` of the raw image (FUSE passthrough to the image file where the
# kernel has it, 6.9+), `vdisk open --via fuse` of a qcow2 copy (every
# request served by the daemon: the path of every non-raw format) and a
# plain `losetup --direct-io=on` of the raw image. Prints the median of RUNS
# runs and each path's ratio to losetup. As root.
#
#   bench/attach.sh                          # 1 GiB image, 3 runs of 5 s each
#   PATHS="fuse losetup" IOENGINE=io_uring bench/attach.sh
#   CACHE=warm bench/attach.sh               # images in the page cache
#   VDISK=/path/to/vdisk bench/attach.sh     # another build
#
# The images' page cache is dropped (fadvise DONTNEED) before each path, so
# every path starts cold: otherwise the paths through the daemon that read
# the image buffered (a qcow2 image's) would race the direct-I/O ones from
# memory. CACHE=warm reads the images into the page cache instead.
#
# Profiling the daemon while it serves (PROFILE=1): a perf record of the
# daemon per path and run (needs perf), under bench/out/.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${SIZE:-1G}
RUNS=${RUNS:-3}
RUNTIME=${RUNTIME:-5}
IOENGINE=${IOENGINE:-libaio}
PATHS=${PATHS:-loop fuse fuse-qcow2 losetup}
PROFILE=${PROFILE:-0}
CACHE=${CACHE:-cold}
OUT=bench/out/attach-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
for t in fio python3 losetup qemu-img; do
	command -v "$t" >/dev/null || { echo "bench: $t is missing" >&2; exit 1; }
done
work=$(mktemp -d /var/tmp/vdisk-bench-attach.XXXXXX)
export VDISK_SOCKET=$work/vdisk.sock VDISK_STATE_DIR=$work/state
vdisk=${VDISK:-$work/vdisk}
cleanup() {
	"$vdisk" close --all >/dev/null 2>&1 || true
	pid=$(pgrep -f -x "$vdisk daemon .*--socket $VDISK_SOCKET.*" || true)
	[ -n "$pid" ] && kill $pid 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
[ -n "${VDISK:-}" ] || go build -o "$vdisk" ./cmd/vdisk
img=$work/disk.img
qcow=$work/disk.qcow2
fallocate -l "$SIZE" "$img"
dd if=/dev/urandom of="$img" bs=1M count=$(($(stat -c %s "$img") >> 20)) conv=notrunc status=none
case " $PATHS " in *" fuse-qcow2 "*) qemu-img convert -f raw -O qcow2 -o preallocation=metadata "$img" "$qcow" ;; esac
sync

read -r -a paths <<<"$PATHS"
# cache drops the images' pages from the page cache (CACHE=cold) or reads
# them in (CACHE=warm).
cache() {
	python3 - "$CACHE" "$@" <<'PY'
import os, sys
for p in sys.argv[2:]:
    if os.path.exists(p):
        fd = os.open(p, os.O_RDONLY)
        if sys.argv[1] == "warm":
            while os.read(fd, 1 << 20):
                pass
        else:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
PY
}
attach() { # path → prints the device
	case $1 in
	loop | fuse) "$vdisk" open --via "$1" "$img" | cut -d' ' -f1 ;;
	fuse-qcow2) "$vdisk" open --via fuse "$qcow" | cut -d' ' -f1 ;;
	losetup) losetup --find --show --direct-io=on "$img" ;;
	esac
}
detach() { # path device
	case $1 in
	loop | fuse) "$vdisk" close "$img" ;;
	fuse-qcow2) "$vdisk" close "$qcow" ;;
	losetup) losetup -d "$2" ;;
	esac
}
jobs=("randread-4k-qd32 randread 4k 32" "randwrite-4k-qd32 randwrite 4k 32" "seqread-1M read 1M 8" "seqwrite-1M write 1M 8")
for run in $(seq 1 "$RUNS"); do
	n=${#paths[@]}
	order=("${paths[@]:run % n}" "${paths[@]:0:run % n}")
	for p in "${order[@]}"; do
		sync
		cache "$img" "$qcow"
		dev=$(attach "$p")
		perf=""
		if [ "$PROFILE" = 1 ] && [ "$p" != losetup ]; then
			dpid=$(pgrep -f -x "$vdisk daemon .*--socket $VDISK_SOCKET.*")
			perf record -q -g -p "$dpid" -o "$OUT/$p-$run.perf" >/dev/null 2>&1 &
			perf=$!
		fi
		for j in "${jobs[@]}"; do
			read -r name rw bs qd <<<"$j"
			fio --name="$name" --filename="$dev" --direct=1 --ioengine="$IOENGINE" --rw="$rw" --bs="$bs" \
				--iodepth="$qd" --size="$SIZE" --time_based --runtime="$RUNTIME" --ramp_time=1 \
				--output-format=json --output="$OUT/$p-$name-$run.json" >/dev/null
		done
		if [ -n "$perf" ]; then kill -INT "$perf"; wait "$perf" || true; fi
		detach "$p" "$dev"
	done
done
python3 - "$OUT" "$RUNS" "${paths[@]}" <<'PY'
import json, sys, statistics
out, runs, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
jobs = ["randread-4k-qd32", "randwrite-4k-qd32", "seqread-1M", "seqwrite-1M"]
def metric(f, j):
    x = json.load(open(f))["jobs"][0]
    side = x["read"] if "read" in j else x["write"]
    return side["bw_bytes"] / 2**20 if "1M" in j else side["iops"]
base = "losetup" if "losetup" in paths else None
others = [p for p in paths if p != base]
w = max(12, max(len(p) for p in paths) + 2)
head = f"{'job':<26}" + "".join(f"{p:>{w}}" for p in paths)
if base:
    head += "".join(f"{p + '/' + base:>{len(p) + len(base) + 3}}" for p in others)
print(head)
for j in jobs:
    m = {p: statistics.median(metric(f"{out}/{p}-{j}-{r}.json", j) for r in range(1, runs + 1)) for p in paths}
    unit = "MiB/s" if "1M" in j else "IOPS"
    line = f"{j + ' ' + unit:<26}" + "".join(f"{m[p]:>{w}.0f}" for p in paths)
    if base:
        line += "".join(f"{m[p] / m[base]:>{len(p) + len(base) + 3}.2f}" for p in others)
    print(line)
PY
echo "bench: raw fio output in $OUT"
