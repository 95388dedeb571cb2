#!/usr/bin/env bash
# fio directly on the block device of each attach path, side by side in one
# run on the same image file: `vdisk open --via loop`, `vdisk open --via
# fuse` and a plain `losetup --direct-io=on`. Prints the median of RUNS runs
# and the vdisk/losetup ratios. As root.
#
#   bench/attach.sh                 # 1 GiB image, 3 runs of 5 s each
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${SIZE:-1G}
RUNS=${RUNS:-3}
RUNTIME=${RUNTIME:-5}
OUT=bench/out/attach-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
work=$(mktemp -d /var/tmp/vdisk-bench-attach.XXXXXX)
export VDISK_SOCKET=$work/vdisk.sock VDISK_STATE_DIR=$work/state
cleanup() {
	"$work/vdisk" close --all >/dev/null 2>&1 || true
	[ -f "$work/daemon.pid" ] && kill "$(cat "$work/daemon.pid")" 2>/dev/null || true
	pkill -f "$work/vdisk daemon" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
go build -o "$work/vdisk" ./cmd/vdisk
img=$work/disk.img
fallocate -l "$SIZE" "$img"
dd if=/dev/urandom of="$img" bs=1M count=$(( $(stat -c %s "$img") >> 20 )) conv=notrunc status=none
sync

paths=(loop fuse losetup)
attach() { # path → prints the device
	case $1 in
	loop | fuse) "$work/vdisk" open --via "$1" "$img" | cut -d' ' -f1 ;;
	losetup) losetup --find --show --direct-io=on "$img" ;;
	esac
}
detach() { # path device
	case $1 in
	loop | fuse) "$work/vdisk" close "$img" ;;
	losetup) losetup -d "$2" ;;
	esac
}
jobs=("randread-4k-qd32 randread 4k 32" "randwrite-4k-qd32 randwrite 4k 32" "seqread-1M read 1M 8" "seqwrite-1M write 1M 8")
for run in $(seq 1 "$RUNS"); do
	order=("${paths[@]:run % 3}" "${paths[@]:0:run % 3}")
	for p in "${order[@]}"; do
		sync
		dev=$(attach "$p")
		for j in "${jobs[@]}"; do
			read -r name rw bs qd <<<"$j"
			fio --name="$name" --filename="$dev" --direct=1 --ioengine=libaio --rw="$rw" --bs="$bs" \
				--iodepth="$qd" --size="$SIZE" --time_based --runtime="$RUNTIME" --ramp_time=1 \
				--output-format=json --output="$OUT/$p-$name-$run.json" >/dev/null
		done
		detach "$p" "$dev"
	done
done
python3 - "$OUT" "$RUNS" <<'PY'
import json, sys, statistics
out, runs = sys.argv[1], int(sys.argv[2])
paths = ["loop", "fuse", "losetup"]
jobs = ["randread-4k-qd32", "randwrite-4k-qd32", "seqread-1M", "seqwrite-1M"]
def metric(f, j):
    x = json.load(open(f))["jobs"][0]
    side = x["read"] if "read" in j else x["write"]
    return side["bw_bytes"] / 2**20 if "1M" in j else side["iops"]
print(f"{'job':<26}" + "".join(f"{p:>10}" for p in paths) + f"{'loop/losetup':>14}{'fuse/losetup':>14}")
for j in jobs:
    m = {p: statistics.median(metric(f"{out}/{p}-{j}-{r}.json", j) for r in range(1, runs + 1)) for p in paths}
    unit = "MiB/s" if "1M" in j else "IOPS"
    print(f"{j+' '+unit:<26}" + "".join(f"{m[p]:>10.0f}" for p in paths) + f"{m['loop']/m['losetup']:>14.2f}{m['fuse']/m['losetup']:>14.2f}")
PY
echo "bench: raw fio output in $OUT"
