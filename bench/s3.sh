#!/usr/bin/env bash
# fio (nbd engine) on disks stored in one S3 server (versitygw over
# loopback), side by side:
#
#   local      `vdisk serve` of a local raw file (the seq write ratio's base)
#   vdisk      `vdisk serve s3://...`, cold: no --s3-cache-dir
#   vdisk-warm `vdisk serve --s3-cache-dir` whose cache the pre-fill filled
#   nbdkit-S3  nbdkit's S3 plugin, 64 KiB objects, with the blocksize filter
#   s3backer   s3backer (FUSE, 64 KiB blocks) served by `nbdkit file`
#
# Every disk is pre-filled first (untimed, one sequential 1M write of all
# of it). Before each job its server is restarted and the page cache
# dropped (echo 3 > /proc/sys/vm/drop_caches), and for the cold columns
# every local cache is removed, so reads come from the store. Jobs: seq
# read and write 1M (QD8), rand read and write 4k (QD32); median of RUNS.
# It also reports vdisk's peak RSS (VmHWM) per column.
#
#   bench/s3.sh                        # 512 MiB disks, 3 runs of 5 s each
#   SIZE=256M RUNS=1 bench/s3.sh
#   VDISK=/path/to/vdisk bench/s3.sh   # a prebuilt binary (A/B runs)
#   TARGETS="local vdisk" bench/s3.sh  # some columns only
#
# Run as root (it installs what is missing, maps BUCKET.localhost in
# /etc/hosts for s3backer's virtual-host requests and restores it after,
# and drops the page cache). versitygw runs with keep-alive
# (VGW_KEEP_ALIVE=true) and virtual-host addressing on localhost besides
# path style (VGW_VIRTUAL_DOMAIN=localhost).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${SIZE:-512M}
RUNS=${RUNS:-3}
RUNTIME=${RUNTIME:-5}
TARGETS=${TARGETS:-local vdisk vdisk-warm nbdkit-S3 s3backer}
ADDR=127.0.0.1:17070
OUT=bench/out/s3-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"

# What the peers need, installed the way scripts/deps.sh does.
pkgs=(fio nbdkit nbdkit-plugin-python python3-boto3 s3backer fuse3)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "bench: installing ${missing[*]}" >&2
	[ "$(id -u)" = 0 ] || { echo "bench: need root to install ${missing[*]}" >&2; exit 1; }
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

work=$(mktemp -d /var/tmp/vdisk-bench-s3.XXXXXX)
srv_pid=
fuse_pid=
hosts_saved=
cleanup() {
	stop_target || true
	scripts/s3test.sh stop "$work/s3" >/dev/null 2>&1 || true
	if [ -n "$hosts_saved" ]; then cat "$work/hosts" >/etc/hosts; fi
	rm -rf "$work"
}
trap cleanup EXIT
if [ -n "${VDISK:-}" ]; then cp "$VDISK" "$work/vdisk"; else go build -o "$work/vdisk" ./cmd/vdisk; fi
export VGW_KEEP_ALIVE=${VGW_KEEP_ALIVE:-true} VGW_VIRTUAL_DOMAIN=localhost
eval "$(scripts/s3test.sh start "$work/s3" "$ADDR")"
bucket=$VDISK_S3_BUCKET
if [[ " $TARGETS " == *" s3backer "* ]] && ! getent hosts "$bucket.localhost" | grep -q 127.0.0.1; then
	cp /etc/hosts "$work/hosts"
	hosts_saved=1
	echo "127.0.0.1 $bucket.localhost" >>/etc/hosts
fi
bytes=$(numfmt --from=iec "$SIZE")

drop_caches() {
	sync
	if [ -w /proc/sys/vm/drop_caches ]; then echo 3 >/proc/sys/vm/drop_caches; fi
}

sock=$work/nbd.sock
mnt=$work/s3backer
peak_rss=0

# start_target T COLD: serve disk T on $sock; COLD removes local caches.
start_target() {
	local t=$1 cold=$2
	rm -f "$sock"
	case "$t" in
	local) "$work/vdisk" serve --log-level warn --unix "$sock" "$work/local.img" & ;;
	vdisk) "$work/vdisk" serve --log-level warn --unix "$sock" "s3://$bucket/vdisk" & ;;
	vdisk-warm)
		"$work/vdisk" serve --log-level warn --unix "$sock" --s3-cache-dir "$work/cache" "s3://$bucket/vdisk-warm" & ;;
	nbdkit-S3)
		nbdkit -f -U "$sock" --filter=blocksize S3 endpoint-url="$VDISK_S3_ENDPOINT" bucket="$bucket" \
			key=nbdkit size="$bytes" object-size=64K minblock=64K & ;;
	s3backer)
		mkdir -p "$mnt"
		[ "$cold" = 1 ] && rm -f "$work/s3backer.cache"
		# In the foreground (-f) so that stop_target can wait for it;
		# --force: the mount token of the previous run may still be set.
		s3backer -f --force --accessId="$AWS_ACCESS_KEY_ID" --accessKey="$AWS_SECRET_ACCESS_KEY" --authVersion=aws4 \
			--baseURL="http://localhost:${ADDR##*:}/" --region=us-east-1 --prefix=s3backer/ \
			--blockSize=64K --size="$bytes" --listBlocks --blockCacheFile="$work/s3backer.cache" \
			"$bucket" "$mnt" 2>>"$work/s3backer.log" &
		fuse_pid=$!
		for _ in $(seq 1 300); do mountpoint -q "$mnt" && [ -e "$mnt/file" ] && break; sleep 0.1; done
		nbdkit -f -U "$sock" file file="$mnt/file" & ;;
	esac
	srv_pid=$!
	for _ in $(seq 1 300); do [ -S "$sock" ] && return 0; sleep 0.1; done
	echo "bench: $t did not start" >&2
	return 1
}

stop_target() {
	if [ -n "$srv_pid" ]; then
		if [ -r "/proc/$srv_pid/status" ]; then
			local hwm
			hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$srv_pid/status")
			[ -n "$hwm" ] && [ "$hwm" -gt "$peak_rss" ] && peak_rss=$hwm
		fi
		kill "$srv_pid" 2>/dev/null || true
		wait "$srv_pid" 2>/dev/null || true
		srv_pid=
	fi
	if mountpoint -q "$mnt" 2>/dev/null; then fusermount -u "$mnt"; fi
	if [ -n "$fuse_pid" ]; then
		wait "$fuse_pid" 2>/dev/null || true
		fuse_pid=
	fi
}

fio_run() { # name rw bs qd out [extra...]
	local name=$1 rw=$2 bs=$3 qd=$4 out=$5
	shift 5
	fio --name="$name" --ioengine=nbd --uri="nbd+unix:///?socket=$sock" --rw="$rw" --bs="$bs" \
		--iodepth="$qd" --size="$SIZE" --output-format=json --output="$out" "$@" >/dev/null
}

jobs=("seqread-1M read 1M 8" "randread-4k-qd32 randread 4k 32" "seqwrite-1M write 1M 8" "randwrite-4k-qd32 randwrite 4k 32")
for t in $TARGETS; do
	case "$t" in
	local) "$work/vdisk" create -f raw --size "$SIZE" "$work/local.img" >/dev/null ;;
	vdisk | vdisk-warm) "$work/vdisk" create -f raw --size "$SIZE" "s3://$bucket/$t" >/dev/null ;;
	esac
	start_target "$t" 1
	echo "bench: pre-filling $t" >&2
	fio_run prefill write 1M 8 "$OUT/$t-prefill.json"
	stop_target
	peak_rss=0
	for run in $(seq 1 "$RUNS"); do
		for j in "${jobs[@]}"; do
			read -r name rw bs qd <<<"$j"
			cold=1
			[ "$t" = vdisk-warm ] && cold=0
			drop_caches
			start_target "$t" "$cold"
			fio_run "$name" "$rw" "$bs" "$qd" "$OUT/$t-$name-$run.json" --time_based --runtime="$RUNTIME" --ramp_time=1
			stop_target
		done
	done
	echo "$peak_rss" >"$OUT/$t-rss"
done

python3 - "$OUT" "$RUNS" $TARGETS <<'PY'
import json, sys, statistics, os
out, runs, targets = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
jobs = ["seqread-1M", "seqwrite-1M", "randread-4k-qd32", "randwrite-4k-qd32"]
def metric(f, j):
    x = json.load(open(f))["jobs"][0]
    side = x["read"] if "read" in j else x["write"]
    return side["bw_bytes"] / 2**20 if "1M" in j else side["iops"]
m = {(t, j): statistics.median(metric(f"{out}/{t}-{j}-{r}.json", j) for r in range(1, runs + 1)) for t in targets for j in jobs}
print(f"{'job':<26}" + "".join(f"{t:>12}" for t in targets) + ("  vdisk/local" if "local" in targets and "vdisk" in targets else ""))
for j in jobs:
    unit = "MiB/s" if "1M" in j else "IOPS"
    line = f"{j+' '+unit:<26}" + "".join(f"{m[t, j]:>12.0f}" for t in targets)
    if "local" in targets and "vdisk" in targets:
        line += f"{m['vdisk', j] / m['local', j]:>13.2f}"
    print(line)
print(f"{'peak RSS MiB (server)':<26}" + "".join(f"{int(open(f'{out}/{t}-rss').read()) / 1024:>12.0f}" for t in targets))
PY
echo "bench: raw fio output in $OUT"
