#!/usr/bin/env bash
# What counting costs: fio randread 4k QD32 (nbd engine, as bench/nbd.sh)
# against vdisk serve without metrics and with --metrics-listen (scraped
# once a second meanwhile, as Prometheus would), alternating ABBA so that
# neither always runs first; prints every run's IOPS and the medians.
#
#   bench/metrics.sh            # 1 GiB image, 6 runs of each, 10 s
#   SIZE=2G RUNS=8 RUNTIME=20 bench/metrics.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${SIZE:-1G}
RUNS=${RUNS:-6}
RUNTIME=${RUNTIME:-10}
work=$(mktemp -d /var/tmp/vdisk-bench-metrics.XXXXXX)
pid=
cleanup() { [ -z "$pid" ] || kill "$pid" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
go build -o "$work/vdisk" ./cmd/vdisk
img=$work/disk.img
fallocate -l "$SIZE" "$img"
dd if=/dev/urandom of="$img" bs=1M count=$(( $(stat -c %s "$img") >> 20 )) conv=notrunc status=none
sync
port=$((20000 + RANDOM % 20000))

one() { # mode run
	local sock=$work/s.sock args=() scraper=
	[ "$1" = metrics ] && args=(--metrics-listen "127.0.0.1:$port")
	"$work/vdisk" serve --log-level warn --unix "$sock" "${args[@]}" "$img" &
	pid=$!
	for _ in $(seq 1 100); do [ -S "$sock" ] && nbdinfo --size "nbd+unix:///?socket=$sock" >/dev/null 2>&1 && break; sleep 0.1; done
	if [ "$1" = metrics ]; then
		(while sleep 1; do curl -s "127.0.0.1:$port/metrics" >/dev/null || true; done) &
		scraper=$!
	fi
	fio --name=rr --ioengine=nbd --uri="nbd+unix:///?socket=$sock" --rw=randread --bs=4k --iodepth=32 \
		--size="$SIZE" --time_based --runtime="$RUNTIME" --ramp_time=1 --output-format=json \
		--output="$work/$1-$2.json" >/dev/null 2>&1
	[ -z "$scraper" ] || { kill "$scraper"; wait "$scraper" 2>/dev/null || true; }
	# The server's CPU time (user + system clock ticks) over its life:
	# less sensitive than IOPS to what else runs on the machine.
	awk '{print $14 + $15}' "/proc/$pid/stat" >"$work/$1-$2.ticks"
	kill "$pid"; wait "$pid" 2>/dev/null || true
	pid=
	rm -f "$sock"
	python3 - "$work/$1-$2.json" "$work/$1-$2.ticks" "$(getconf CLK_TCK)" "$work/$1-$2" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]["read"]
ios = j["total_ios"]
cpu = int(open(sys.argv[2]).read()) / int(sys.argv[3])
open(sys.argv[4] + ".iops", "w").write("%d\n" % round(j["iops"]))
open(sys.argv[4] + ".cpu", "w").write("%.3f\n" % (cpu / ios * 1e6 if ios else 0))
PY
	echo "run $2 $1: $(cat "$work/$1-$2.iops") IOPS, $(cat "$work/$1-$2.cpu") us of server CPU per read"
}
for r in $(seq 1 "$RUNS"); do
	if [ $((r % 2)) = 1 ]; then one plain "$r"; one metrics "$r"; else one metrics "$r"; one plain "$r"; fi
done
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
p=$(cat "$work"/plain-*.iops | median)
m=$(cat "$work"/metrics-*.iops | median)
echo "median randread 4k QD32: without metrics $p IOPS, with metrics $m IOPS ($(python3 -c "print(f'{($m-$p)/$p*100:+.1f}%')"))"
pc=$(cat "$work"/plain-*.cpu | median)
mc=$(cat "$work"/metrics-*.cpu | median)
echo "median server CPU per read: without metrics $pc us, with metrics $mc us ($(python3 -c "print(f'{($mc-$pc)/$pc*100:+.1f}%')"))"
