#!/usr/bin/env bash
# What counting costs: fio randread 4k QD32 (nbd engine, as bench/nbd.sh)
# against vdisk serve without metrics and with --metrics-listen (scraped
# once a second meanwhile, as Prometheus would), alternating ABBA so that
# neither always runs first; prints every run's IOPS and the medians.
#
#   scripts/bench-metrics.sh            # 1 GiB image, 6 runs of each, 10 s
#   SIZE=2G RUNS=8 RUNTIME=20 scripts/bench-metrics.sh
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
		--output="$work/$1-$2.json" >/dev/null
	[ -z "$scraper" ] || { kill "$scraper"; wait "$scraper" 2>/dev/null || true; }
	kill "$pid"; wait "$pid" 2>/dev/null || true
	pid=
	rm -f "$sock"
	python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["jobs"][0]["read"]["iops"]))' "$work/$1-$2.json" >"$work/$1-$2.iops"
	echo "run $2 $1: $(cat "$work/$1-$2.iops") IOPS"
}
for r in $(seq 1 "$RUNS"); do
	if [ $((r % 2)) = 1 ]; then one plain "$r"; one metrics "$r"; else one metrics "$r"; one plain "$r"; fi
done
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
p=$(cat "$work"/plain-*.iops | median)
m=$(cat "$work"/metrics-*.iops | median)
echo "median randread 4k QD32: without metrics $p IOPS, with metrics $m IOPS ($(python3 -c "print(f'{($m-$p)/$p*100:+.1f}%')"))"
