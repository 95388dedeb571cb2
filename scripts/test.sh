#!/usr/bin/env bash
# Runs every vdisk test: installs what is missing, prepares the VM test
# guest, then gofmt, go vet, staticcheck, and go test -race over the whole
# module (the real-peer, kernel and VM tests included; they need root, as
# CI has).
#
# The kernel nbd and ublk tests (internal/vmtest and its users) boot a
# Debian kernel under qemu. This script prepares that guest's cache
# (VMTEST_CACHE, default /var/cache/vmtest; the first time it downloads
# about 130 MB) with the scripts in VMTEST_DIR (default ../shared/vm next to
# the checkout, else /work/shared/vm) and fails if it cannot. The only way
# to leave the VM tests out is to ask: VDISK_SKIP_VM=1, which the summary
# at the end repeats.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
scripts/deps.sh
export PATH="$(go env GOPATH)/bin:$PATH"

vm_status="not reached"
summary() {
	local rc=$?
	echo
	echo "== summary"
	echo "VM tests (kernel nbd, ublk): $vm_status"
	if [ "$rc" = 0 ]; then echo "result: PASS"; else echo "result: FAIL (exit $rc)"; fi
}
trap summary EXIT

echo "== VM test guest"
if [ "${VDISK_SKIP_VM:-}" = 1 ]; then
	vm_status="SKIPPED on request (VDISK_SKIP_VM=1): the kernel nbd and ublk tests did NOT run"
	echo "!! VDISK_SKIP_VM=1: the kernel nbd and ublk VM tests are skipped" >&2
	export VDISK_SKIP_VM=1
else
	if [ -z "${VMTEST_DIR:-}" ]; then
		for d in "$root/../shared/vm" /work/shared/vm; do
			if [ -x "$d/prepare.sh" ]; then VMTEST_DIR=$(cd "$d" && pwd); break; fi
		done
	fi
	if [ -z "${VMTEST_DIR:-}" ] || [ ! -x "$VMTEST_DIR/prepare.sh" ]; then
		vm_status="FAILED: no VM scripts (set VMTEST_DIR, or VDISK_SKIP_VM=1 to skip them)"
		echo "test.sh: no VM scripts found (looked in \$VMTEST_DIR, $root/../shared/vm, /work/shared/vm); set VMTEST_DIR, or VDISK_SKIP_VM=1 to skip the VM tests" >&2
		exit 1
	fi
	export VMTEST_DIR VMTEST_CACHE=${VMTEST_CACHE:-/var/cache/vmtest}
	# The same module list as internal/vmtest (extraModules), so the tests
	# find the cache up to date; ublk is required: no silent fallback to a
	# kernel without it.
	if ! VMTEST_EXTRA_MODULES=isofs VMTEST_REQUIRE_UBLK=1 "$VMTEST_DIR/prepare.sh" "$VMTEST_CACHE"; then
		vm_status="FAILED: $VMTEST_DIR/prepare.sh $VMTEST_CACHE failed (VDISK_SKIP_VM=1 skips the VM tests)"
		exit 1
	fi
	vm_status="run (guest cache $VMTEST_CACHE: $(. "$VMTEST_CACHE/vm.env" && echo "kernel $KVER, ublk=$UBLK"))"
fi

echo "== gofmt"
bad=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$bad" ]; then echo "gofmt would change: $bad" >&2; exit 1; fi
echo "== go vet"
go vet ./...
echo "== staticcheck"
staticcheck ./...
echo "== go test -race"
go test -race -count=1 -timeout 20m ./...
