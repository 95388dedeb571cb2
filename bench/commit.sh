#!/usr/bin/env bash
# Times `vdisk commit` against `qemu-img commit` (the system's and qemu
# 10's) on copies of the same chain, in one run, and prints the median of
# RUNS runs and the speed ratios (qemu-img time / vdisk time: above 1 means
# vdisk is faster). The chain is a qcow2 base of SIZE_MB with data all over
# it under a qcow2 top that rewrites half of it (every other 4 MiB) and
# zeroes some more; each run commits a fresh copy, and the results are
# compared with qemu-img compare.
#
#   bench/commit.sh             # 1 GiB, 3 runs
#   SIZE_MB=2048 RUNS=5 bench/commit.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-1024}
RUNS=${RUNS:-3}
Q10=$(bash /work/shared/peers/qemu10.sh 2>/dev/null || true)
work=$(mktemp -d /var/tmp/vdisk-bench-commit.XXXXXX)
trap 'rm -rf "$work"' EXIT
go build -o "$work/vdisk" ./cmd/vdisk

echo "bench: a ${SIZE_MB} MiB qcow2 base under a top that rewrites half of it"
mkdir "$work/ref"
raw=$work/base.raw
truncate -s "${SIZE_MB}M" "$raw"
for ((mb = 0; mb < SIZE_MB; mb += 2)); do
	dd if=/dev/urandom of="$raw" bs=1M seek=$mb count=1 conv=notrunc status=none
done
qemu-img convert -f raw -O qcow2 "$raw" "$work/ref/base.qcow2"
rm -f "$raw"
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$work/ref/top.qcow2"
traw=$work/top.raw
truncate -s "${SIZE_MB}M" "$traw"
io=()
for ((mb = 0; mb < SIZE_MB; mb += 8)); do
	dd if=/dev/urandom of="$traw" bs=1M seek=$mb count=4 conv=notrunc status=none
	io+=(-c "write -s $traw $((mb << 20)) 4M")
	io+=(-c "write -z $(((mb + 5) << 20)) 1M")
done
qemu-io "${io[@]}" "$work/ref/top.qcow2" >/dev/null
rm -f "$traw"
# The expected result: what the top reads.
qemu-img convert -O raw "$work/ref/top.qcow2" "$work/want.raw"

secs() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); awk -v s="$s" -v e="$e" 'BEGIN{print e-s}'; }
median() { printf '%s\n' "$@" | sort -g | sed -n "$(( (RUNS + 1) / 2 ))p"; }
fresh() { rm -rf "$work/run"; cp -a --sparse=always "$work/ref" "$work/run"; sync; }
check() {
	qemu-img compare -q -F raw "$work/run/base.qcow2" "$work/want.raw" || { echo "bench: $1: the base differs" >&2; exit 1; }
	qemu-img check -q "$work/run/base.qcow2" || { echo "bench: $1: qemu-img check" >&2; exit 1; }
}
tools=("qemu-img (system)|qemu-img")
if [ -n "$Q10" ] && [ -x "$Q10/qemu-img" ]; then tools+=("qemu-img 10|$Q10/qemu-img"); fi
v=()
declare -A q
for _ in $(seq 1 "$RUNS"); do
	fresh
	v+=("$(secs "$work/vdisk" commit "$work/run/top.qcow2")")
	check vdisk
	for t in "${tools[@]}"; do
		fresh
		q[$t]+="$(secs "${t#*|}" commit -t writeback "$work/run/top.qcow2") "
		check "${t%%|*}"
	done
done
vm=$(median "${v[@]}")
printf '%-20s %10s %8s\n' tool "median s" "ratio"
printf '%-20s %10.3f %8s\n' "vdisk" "$vm" "1.00"
for t in "${tools[@]}"; do
	# shellcheck disable=SC2086
	qm=$(median ${q[$t]})
	printf '%-20s %10.3f %8.2f\n' "${t%%|*}" "$qm" "$(awk -v q="$qm" -v v="$vm" 'BEGIN{print q/v}')"
done
