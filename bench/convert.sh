#!/usr/bin/env bash
# Times `vdisk convert` against `qemu-img convert` on the same source and
# destination formats, alternating the two in one run, and prints the median
# of RUNS runs and the speed ratio (qemu-img time / vdisk time: above 1 means
# vdisk is faster). qemu-img runs with -t writeback: its convert default
# (unsafe) never flushes the destination, while vdisk convert returns only
# when the copy is on stable storage; writeback makes qemu-img flush too.
#
#   bench/convert.sh            # 1 GiB source, half of it data, 3 runs
#   SIZE_MB=2048 RUNS=5 bench/convert.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-1024}
RUNS=${RUNS:-3}
work=$(mktemp -d /var/tmp/vdisk-bench-convert.XXXXXX)
trap 'rm -rf "$work"' EXIT
go build -o "$work/vdisk" ./cmd/vdisk

echo "bench: making a ${SIZE_MB} MiB source, every other 4 MiB of it random data"
raw=$work/src.raw
truncate -s "${SIZE_MB}M" "$raw"
for ((mb = 0; mb < SIZE_MB; mb += 8)); do
	dd if=/dev/urandom of="$raw" bs=1M seek=$mb count=4 conv=notrunc status=none
done
qemu-img convert -f raw -O qcow2 "$raw" "$work/src.qcow2"
# For -c: text-like data that compresses (the repository's Go sources,
# over and over), a quarter of SIZE_MB.
text=$work/text.raw
find internal -name '*.go' -exec cat {} + >"$work/go.txt"
while [ "$(stat -c %s "$work/go.txt")" -lt "$((SIZE_MB / 4 * 1048576))" ]; do
	cat "$work/go.txt" "$work/go.txt" >"$work/go2.txt" && mv "$work/go2.txt" "$work/go.txt"
done
head -c "$((SIZE_MB / 4 * 1048576))" "$work/go.txt" >"$text"

# name src-file src-fmt dst-fmt [flag]
cases=(
	"qcow2-to-raw $work/src.qcow2 qcow2 raw"
	"raw-to-qcow2 $raw raw qcow2"
	"qcow2-to-qcow2 $work/src.qcow2 qcow2 qcow2"
	"raw-to-raw $raw raw raw"
	"text-to-qcow2-c $text raw qcow2 -c"
)
secs() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); awk -v s="$s" -v e="$e" 'BEGIN{print e-s}'; }
printf '%-16s %12s %12s %8s\n' case "qemu-img s" "vdisk s" ratio
for c in "${cases[@]}"; do
	read -r name src sf df flag <<<"$c"
	flags=()
	if [ -n "${flag:-}" ]; then flags=("$flag"); fi
	q=() v=()
	for _ in $(seq 1 "$RUNS"); do
		rm -f "$work/out"
		q+=("$(secs qemu-img convert -t writeback "${flags[@]}" -f "$sf" -O "$df" "$src" "$work/out")")
		qsize=$(stat -c %s "$work/out")
		rm -f "$work/out"
		v+=("$(secs "$work/vdisk" convert "${flags[@]}" -f "$sf" -O "$df" "$src" "$work/out")")
		vsize=$(stat -c %s "$work/out")
		qemu-img compare -q -f "$sf" -F "$df" "$src" "$work/out" || { echo "bench: $name output differs" >&2; exit 1; }
	done
	qm=$(printf '%s\n' "${q[@]}" | sort -g | sed -n "$(( (RUNS + 1) / 2 ))p")
	vm=$(printf '%s\n' "${v[@]}" | sort -g | sed -n "$(( (RUNS + 1) / 2 ))p")
	printf '%-16s %12.3f %12.3f %8.2f' "$name" "$qm" "$vm" "$(awk -v q="$qm" -v v="$vm" 'BEGIN{print q/v}')"
	if [ -n "${flag:-}" ]; then printf '   output bytes: qemu-img %s, vdisk %s' "$qsize" "$vsize"; fi
	echo
done
