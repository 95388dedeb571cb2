#!/usr/bin/env bash
# fio (nbd engine) through `vdisk serve s3://...` on versitygw over loopback,
# next to `vdisk serve` of a local raw file, in one run; median of RUNS runs
# and the s3/local ratio. The S3 server stores its objects on the same local
# disk, so the ratio is the cost of the object-store path itself.
#
#   bench/s3.sh                    # 512 MiB image, 3 runs of 5 s each
#   VDISK=/path/to/vdisk bench/s3.sh   # a prebuilt binary (A/B runs)
#   FORMAT=qcow2 bench/s3.sh       # a qcow2 image in the store (and locally)
#
# versitygw runs with keep-alive (VGW_KEEP_ALIVE=true; its default closes
# every connection after one request, which no production server does) and
# MD5 ETags (its default; VGW_DATA_INTEGRITY_ETAG=true measures without
# the server's MD5 pass).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${SIZE:-512M}
RUNS=${RUNS:-3}
RUNTIME=${RUNTIME:-5}
FORMAT=${FORMAT:-raw}
OUT=bench/out/s3-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
work=$(mktemp -d /var/tmp/vdisk-bench-s3.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done
	scripts/s3test.sh stop "$work/s3" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT
if [ -n "${VDISK:-}" ]; then cp "$VDISK" "$work/vdisk"; else go build -o "$work/vdisk" ./cmd/vdisk; fi
export VGW_KEEP_ALIVE=${VGW_KEEP_ALIVE:-true}
eval "$(scripts/s3test.sh start "$work/s3" 127.0.0.1:17070)"
url=s3://$VDISK_S3_BUCKET/bench
"$work/vdisk" create -f "$FORMAT" --size "$SIZE" "$url" >/dev/null
"$work/vdisk" create -f "$FORMAT" --size "$SIZE" "$work/local.img" >/dev/null

jobs=("seqwrite-1M write 1M 8" "seqread-1M read 1M 8" "randwrite-4k-qd32 randwrite 4k 32" "randread-4k-qd32 randread 4k 32")
for run in $(seq 1 "$RUNS"); do
	for t in s3 local; do
		sock=$work/$t.sock
		rm -f "$sock"
		if [ "$t" = s3 ]; then img=$url; else img=$work/local.img; fi
		"$work/vdisk" serve --log-level warn --unix "$sock" "$img" &
		pid=$!
		pids+=("$pid")
		for _ in $(seq 1 100); do [ -S "$sock" ] && break; sleep 0.1; done
		for j in "${jobs[@]}"; do
			read -r name rw bs qd <<<"$j"
			fio --name="$name" --ioengine=nbd --uri="nbd+unix:///?socket=$sock" --rw="$rw" --bs="$bs" \
				--iodepth="$qd" --size="$SIZE" --time_based --runtime="$RUNTIME" --ramp_time=1 \
				--output-format=json --output="$OUT/$t-$name-$run.json" >/dev/null
		done
		kill "$pid"; wait "$pid" 2>/dev/null || true
	done
done
python3 - "$OUT" "$RUNS" <<'PY'
import json, sys, statistics
out, runs = sys.argv[1], int(sys.argv[2])
jobs = ["seqwrite-1M", "seqread-1M", "randwrite-4k-qd32", "randread-4k-qd32"]
def metric(f, j):
    x = json.load(open(f))["jobs"][0]
    side = x["read"] if "read" in j else x["write"]
    return side["bw_bytes"] / 2**20 if "1M" in j else side["iops"]
print(f"{'job':<26}{'s3':>10}{'local':>10}{'s3/local':>10}")
for j in jobs:
    m = {t: statistics.median(metric(f"{out}/{t}-{j}-{r}.json", j) for r in range(1, runs + 1)) for t in ("s3", "local")}
    unit = "MiB/s" if "1M" in j else "IOPS"
    print(f"{j+' '+unit:<26}{m['s3']:>10.0f}{m['local']:>10.0f}{m['s3']/m['local']:>10.2f}")
PY
echo "bench: raw fio output in $OUT"
