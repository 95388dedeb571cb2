#!/usr/bin/env bash
# Runs fio (nbd engine) against vdisk serve, qemu-nbd (cache=writeback and
# cache=none) and nbdkit file, side by side in one run, on the same raw
# image, and prints the median of RUNS runs for each workload and the
# vdisk/peer ratios, plus each server's peak RSS (VmHWM).
#
#   bench/nbd.sh                  # 1 GiB image, 3 runs of 5 s each
#   SIZE=2G RUNS=5 RUNTIME=10 bench/nbd.sh
#   FORMAT=qcow2 bench/nbd.sh     # a qcow2 image (nbdkit has no qcow2 writer: left out)
#   CACHE=none bench/nbd.sh      # vdisk --cache=none --aio=io_uring against qemu-nbd 10
#                                 # --cache=none --aio=io_uring and fio io_uring O_DIRECT on
#                                 # the file itself (the limit; raw only). qemu 10 comes from
#                                 # QEMU10_DIR, else /work/shared/peers/qemu10.sh.
#
# Output: a table on stdout; raw fio JSON under bench/out/.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${SIZE:-1G}
RUNS=${RUNS:-3}
RUNTIME=${RUNTIME:-5}
FORMAT=${FORMAT:-raw}
CACHE=${CACHE:-}
OUT=bench/out/nbd-$FORMAT${CACHE:+-cache$CACHE}-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
work=$(mktemp -d /var/tmp/vdisk-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

for t in fio qemu-nbd nbdkit nbdinfo python3 go; do
	command -v "$t" >/dev/null || { echo "bench: $t is missing (scripts/deps.sh installs it)" >&2; exit 1; }
done
go build -o "$work/vdisk" ./cmd/vdisk
img=$work/disk.img
echo "bench: filling a $SIZE image with random data"
fallocate -l "$SIZE" "$img"
dd if=/dev/urandom of="$img" bs=1M count=$(( $(stat -c %s "$img") >> 20 )) conv=notrunc status=none
servers=(vdisk qemu-wb qemu-none nbdkit)
if [ "$FORMAT" = qcow2 ]; then
	qemu-img convert -f raw -O qcow2 "$img" "$work/disk.qcow2"
	rm "$img"
	img=$work/disk.qcow2
	servers=(vdisk qemu-wb qemu-none)
fi
vdisk_args=()
if [ "$CACHE" = none ]; then
	Q10=${QEMU10_DIR:-$(bash /work/shared/peers/qemu10.sh 2>/dev/null || true)}
	[ -x "$Q10/qemu-nbd" ] || { echo "bench: CACHE=none needs qemu-nbd 10: set QEMU10_DIR" >&2; exit 1; }
	vdisk_args=(--cache=none --aio=io_uring)
	servers=(vdisk qemu10-none)
	[ "$FORMAT" = raw ] && servers+=(file-direct)
elif [ -n "$CACHE" ]; then
	echo "bench: CACHE=$CACHE: only none is a mode here" >&2
	exit 1
fi
start_server() { # name sock
	case $1 in
	vdisk) exec "$work/vdisk" serve --log-level warn "${vdisk_args[@]}" --unix "$2" "$img" ;;
	qemu10-none) exec "$Q10/qemu-nbd" -f "$FORMAT" --cache=none --aio=io_uring -t -e 16 -k "$2" "$img" ;;
	qemu-wb) exec qemu-nbd -f "$FORMAT" --cache=writeback -t -e 16 -k "$2" "$img" ;;
	qemu-none) exec qemu-nbd -f "$FORMAT" --cache=none -t -e 16 -k "$2" "$img" ;;
	nbdkit) exec nbdkit -f -U "$2" file "$img" ;;
	esac
}
# name rw bs iodepth
workloads=(
	"seqread-1M read 1M 8"
	"seqwrite-1M write 1M 8"
	"randread-4k-qd1 randread 4k 1"
	"randread-4k-qd32 randread 4k 32"
	"randwrite-4k-qd32 randwrite 4k 32"
)

sync
for run in $(seq 1 "$RUNS"); do
	# Rotate the order each run, so no server always follows the same one.
	order=("${servers[@]:run % ${#servers[@]}}" "${servers[@]:0:run % ${#servers[@]}}")
	for s in "${order[@]}"; do
		if [ "$s" = file-direct ]; then
			# No server: fio's own io_uring with O_DIRECT on the image, the
			# most the file gives.
			for w in "${workloads[@]}"; do
				read -r name rw bs qd <<<"$w"
				fio --name="$name" --ioengine=io_uring --direct=1 --filename="$img" \
					--rw="$rw" --bs="$bs" --iodepth="$qd" --size="$SIZE" \
					--time_based --runtime="$RUNTIME" --ramp_time=1 \
					--output-format=json --output="$OUT/$s-$name-$run.json" >/dev/null
			done
			echo 0 >"$OUT/$s-rss-$run.txt"
			continue
		fi
		sync # start every server with no dirty pages left by the one before
		sock=$work/$s.sock
		start_server "$s" "$sock" >"$OUT/$s.log" 2>&1 &
		pid=$!
		pids+=("$pid")
		for _ in $(seq 1 100); do [ -S "$sock" ] && nbdinfo --size "nbd+unix:///?socket=$sock" >/dev/null 2>&1 && break; sleep 0.1; done
		for w in "${workloads[@]}"; do
			read -r name rw bs qd <<<"$w"
			fio --name="$name" --ioengine=nbd --uri="nbd+unix:///?socket=$sock" \
				--rw="$rw" --bs="$bs" --iodepth="$qd" --size="$SIZE" \
				--time_based --runtime="$RUNTIME" --ramp_time=1 \
				--output-format=json --output="$OUT/$s-$name-$run.json" >/dev/null
		done
		grep VmHWM "/proc/$pid/status" | awk '{print $2}' >"$OUT/$s-rss-$run.txt" || echo 0 >"$OUT/$s-rss-$run.txt"
		kill "$pid"; wait "$pid" 2>/dev/null || true
		rm -f "$sock"
	done
done

python3 - "$OUT" "$RUNS" "${servers[@]}" <<'PY'
import json, sys, statistics, glob, os
out, runs = sys.argv[1], int(sys.argv[2])
servers = sys.argv[3:]
workloads = ["seqread-1M", "seqwrite-1M", "randread-4k-qd1", "randread-4k-qd32", "randwrite-4k-qd32"]
def metric(path, w):
    j = json.load(open(path))["jobs"][0]
    side = j["read"] if "read" in w else j["write"]
    return side["bw_bytes"] / 2**20 if "1M" in w else side["iops"]
print(f"{'workload':<20}" + "".join(f"{s:>12}" for s in servers) + "".join(f"{'vdisk/'+s:>16}" for s in servers[1:]))
for w in workloads:
    med = {}
    for s in servers:
        vals = [metric(f"{out}/{s}-{w}-{r}.json", w) for r in range(1, runs + 1)]
        med[s] = statistics.median(vals)
    unit = "MiB/s" if "1M" in w else "IOPS"
    print(f"{w+' '+unit:<20}" + "".join(f"{med[s]:>12.0f}" for s in servers) + "".join(f"{med['vdisk']/med[s]:>16.2f}" for s in servers[1:]))
rss = {s: statistics.median(int(open(f"{out}/{s}-rss-{r}.txt").read().strip() or 0) for r in range(1, runs + 1)) for s in servers}
print(f"{'peak RSS MiB':<20}" + "".join(f"{rss[s]/1024:>12.1f}" for s in servers))
PY
echo "bench: raw fio output in $OUT"
