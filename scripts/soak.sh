#!/bin/bash
# soak.sh: a long mixed workload through `vdisk serve` with servers killed
# and restarted under it. Not run by CI.
#
#   scripts/soak.sh [MINUTES]        default 10
#
# Serves five 64 MiB disks at once, each by its own `vdisk serve` on a
# unix socket: raw, qcow2, vhdx, LUKS2 on qcow2, and a qcow2 image in an
# object store (s3://, on a versitygw this script starts). On each, scripts/soak-driver.py
# keeps 64 commands in flight (reads, writes, trims, write-zeroes, flushes)
# and checks every read. About every 60 s one server, chosen at random, is
# killed with SIGKILL and started again; its driver then reads the whole
# disk back and checks that every flushed write is there. Every 20 s the
# script prints, per server: its pid, RSS and open descriptors from /proc,
# and go_goroutines and process_open_fds from `--metrics-listen`, so that
# growth shows. SOAK_KILL_EVERY=SECONDS changes the kill interval. Needs qemu-img, /usr/bin/python3 with libnbd's module
# (python3-libnbd), curl, and versitygw (scripts/s3test.sh installs it).
# Exits 1 if any check failed.
set -uo pipefail

minutes=${1:-10}
every=${SOAK_KILL_EVERY:-60} # seconds between kills, on average (at least 11)
cd "$(dirname "$0")/.."
W=$(mktemp -d /tmp/vdisk-soak.XXXXXX)
size=$((64 << 20))
names=(raw qcow2 vhdx luks2-qcow2 s3)
mbase=$((19000 + RANDOM % 1000))
s3addr=127.0.0.1:$((mbase + 100))
declare -A pid img extra
drivers=()

cleanup() {
	for n in "${names[@]}"; do
		[ -n "${pid[$n]:-}" ] && kill "${pid[$n]}" 2>/dev/null
	done
	for d in "${drivers[@]}"; do kill "$d" 2>/dev/null; done
	scripts/s3test.sh stop "$W/s3" >/dev/null 2>&1
}
trap cleanup EXIT

echo "soak: $minutes min in $W" >&2
go build -o "$W/vdisk" ./cmd/vdisk || exit 1
eval "$(scripts/s3test.sh start "$W/s3" "$s3addr")" || exit 1

printf 'soak passphrase' >"$W/key"
qemu-img create -q -f raw "$W/raw.img" $size
qemu-img create -q -f qcow2 "$W/qcow2.qcow2" $size
qemu-img create -q -f vhdx "$W/vhdx.vhdx" $size
"$W/vdisk" create -f qcow2 --encrypt luks2 --key-file "$W/key" --pbkdf pbkdf2 \
	--pbkdf-force-iterations 1000 "$W/luks.qcow2" --size 64M >/dev/null || exit 1
s3url="s3://$VDISK_S3_BUCKET/soak-$$"
"$W/vdisk" create -f qcow2 --s3-chunk-size 1M "$s3url" --size 64M >/dev/null || exit 1
img=([raw]="$W/raw.img" [qcow2]="$W/qcow2.qcow2" [vhdx]="$W/vhdx.vhdx" [luks2-qcow2]="$W/luks.qcow2" [s3]="$s3url")
extra=([raw]="" [qcow2]="" [vhdx]="" [luks2-qcow2]="--key-file $W/key --allow-discards" [s3]="--s3-lease-ttl 10s")

# start NAME [FLAGS]: start NAME's server and wait until it accepts.
start() {
	local n=$1 i
	shift
	rm -f "$W/$n.sock"
	# shellcheck disable=SC2086
	"$W/vdisk" serve --unix "$W/$n.sock" --metrics-listen "127.0.0.1:$(port "$n")" \
		${extra[$n]} "$@" "${img[$n]}" >>"$W/$n.serve.log" 2>&1 &
	pid[$n]=$!
	for i in $(seq 300); do
		[ -S "$W/$n.sock" ] && return 0
		kill -0 "${pid[$n]}" 2>/dev/null || return 1
		sleep 0.1
	done
	return 1
}

port() {
	local i
	for i in "${!names[@]}"; do [ "${names[$i]}" = "$1" ] && echo $((mbase + i)); done
}

sample() {
	local t=$1 n p rss fds m gor mfds
	for n in "${names[@]}"; do
		p=${pid[$n]}
		rss=$(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null)
		fds=$(ls "/proc/$p/fd" 2>/dev/null | wc -l)
		m=$(curl -s --max-time 5 "http://127.0.0.1:$(port "$n")/metrics")
		gor=$(awk '$1 == "go_goroutines" {print $2}' <<<"$m")
		mfds=$(awk '$1 == "process_open_fds" {print $2}' <<<"$m")
		printf '%6s %-12s %8s %10s %6s %10s %11s\n' "$t" "$n" "$p" "${rss:-?}" "$fds" "${mfds:-?}" "${gor:-?}"
	done
}

for n in "${names[@]}"; do
	start "$n" || { echo "soak: $n: serve did not start:" >&2; cat "$W/$n.serve.log" >&2; exit 1; }
done
for n in "${names[@]}"; do
	/usr/bin/python3 -B scripts/soak-driver.py "$W/$n.sock" $size "$W/stop" "$n" >"$W/$n.driver.log" 2>&1 &
	drivers+=($!)
done

printf '%6s %-12s %8s %10s %6s %10s %11s\n' time server pid rss_kib fds open_fds goroutines
start_s=$SECONDS
end=$((SECONDS + minutes * 60))
next_kill=$((SECONDS + every - 10 + RANDOM % 21))
next_sample=$SECONDS
kills=0
while [ $SECONDS -lt $end ]; do
	el=$((SECONDS - start_s))
	if [ $SECONDS -ge $next_sample ]; then
		sample "$((el / 60))m$((el % 60))s"
		next_sample=$((SECONDS + 20))
	fi
	if [ $SECONDS -ge $next_kill ]; then
		n=${names[$((RANDOM % ${#names[@]}))]}
		kill -9 "${pid[$n]}"
		wait "${pid[$n]}" 2>/dev/null
		kills=$((kills + 1))
		echo "   kill -9 $n (pid ${pid[$n]}) at ${el}s" >&2
		flags=()
		if [ "$n" = s3 ]; then
			sleep 11 # let the dead writer's 10 s lease run out
			flags=(--force-takeover)
		fi
		until start "$n" "${flags[@]}"; do
			echo "   $n did not restart; retrying (see $W/$n.serve.log)" >&2
			sleep 1
		done
		echo "   restarted $n (pid ${pid[$n]})" >&2
		next_kill=$((SECONDS + every - 10 + RANDOM % 21))
	fi
	sleep 1
done
el=$((SECONDS - start_s))
sample "$((el / 60))m$((el % 60))s"

touch "$W/stop"
rc=0
for d in "${drivers[@]}"; do wait "$d" || rc=1; done
drivers=()
echo
echo "kills: $kills"
for n in "${names[@]}"; do
	grep -E 'FINAL|MISMATCH' "$W/$n.driver.log" | tail -5
done
[ $rc -eq 0 ] && echo "soak: all checks passed" || echo "soak: FAILED; logs in $W"
exit $rc
