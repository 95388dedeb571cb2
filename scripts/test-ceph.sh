#!/bin/bash
# test-ceph.sh: run vdisk's S3 tests against Ceph RGW instead of versitygw.
# Optional, not part of CI. Runs as root (scripts/ceph-rgw.sh installs and
# starts a throw-away one-node Ceph under a temporary directory, stopped
# on exit).
#
#   scripts/test-ceph.sh                  the S3 tests: every test of
#                                         ./internal/storage/..., and
#                                         TestS3* of ./internal/cli and
#                                         ./internal/e2e
#   scripts/test-ceph.sh ARGS...          `go test ARGS...` instead, e.g.
#                                         ./internal/storage/chunked -run TestLease
#
# The tests reach RGW through s3test's external mode (VDISK_TEST_S3_*, see
# internal/storage/objstore/s3/s3test); outage tests stop and start
# radosgw alone. Packages run one at a time (-p 1): they share the server.
# Env: CEPH_RGW_PORT (default 7480; the mon takes the next two ports),
# KEEP=1 keeps the Ceph directory (logs in DIR/ceph/log) after the run.
# The go test output is in /tmp/vdisk-test-ceph.log.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD

port=${CEPH_RGW_PORT:-7480}
dir=$(mktemp -d /tmp/vdisk-ceph-XXXXXX)
out=/tmp/vdisk-test-ceph.log # kept: the whole go test output
: >"$out"
cleanup() {
	"$root/scripts/ceph-rgw.sh" stop "$dir/ceph" || echo "test-ceph: stop failed; see $dir" >&2
	if [ "${KEEP:-}" = 1 ]; then
		echo "test-ceph: kept $dir" >&2
	else
		rm -rf "$dir"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t0=$(date +%s)
envs=$("$root/scripts/ceph-rgw.sh" start "$dir/ceph" "$port") || exit 1
eval "$envs"
t1=$(date +%s)
echo "test-ceph: Ceph RGW up on $VDISK_S3_ENDPOINT in $((t1 - t0))s ($(radosgw --version | cut -d' ' -f1-3))"

export VDISK_TEST_S3_ENDPOINT=$VDISK_S3_ENDPOINT VDISK_TEST_S3_BUCKET=$VDISK_S3_BUCKET \
	VDISK_TEST_S3_ACCESS_KEY=$AWS_ACCESS_KEY_ID VDISK_TEST_S3_SECRET_KEY=$AWS_SECRET_ACCESS_KEY \
	VDISK_TEST_S3_REGION=$AWS_REGION \
	VDISK_TEST_S3_STOP="$root/scripts/ceph-rgw.sh stop-rgw $dir/ceph" \
	VDISK_TEST_S3_START="$root/scripts/ceph-rgw.sh start-rgw $dir/ceph"
# The tests take their credentials from VDISK_TEST_S3_*; vdisk itself
# (e2e) gets them from s3test too.
unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION VDISK_S3_ENDPOINT VDISK_S3_BUCKET

rc=0
if [ $# -gt 0 ]; then
	go test -p 1 -count=1 -v "$@" 2>&1 | tee "$out" | grep -E '^(--- |FAIL|ok|panic)'
	rc=${PIPESTATUS[0]}
else
	for run in "./internal/storage/..." "-run ^TestS3 ./internal/cli/" "-run ^TestS3 ./internal/e2e/"; do
		echo "test-ceph: go test -p 1 -count=1 -v $run"
		# shellcheck disable=SC2086 # the flags and packages of one run
		go test -p 1 -count=1 -v $run 2>&1 | tee -a "$out" | grep -E '^(--- |FAIL|ok|panic)'
		[ "${PIPESTATUS[0]}" = 0 ] || rc=1
	done
fi
t2=$(date +%s)

count() { grep -cE "^ *--- $1" "$out" || true; }
echo "test-ceph: tests (subtests included): $(count PASS) passed, $(count FAIL) failed, $(count SKIP) skipped in $((t2 - t1))s"
if [ "$rc" != 0 ]; then
	echo "test-ceph: FAILED:"
	grep -E '^ *--- FAIL' "$out" | sed 's/^/  /'
	echo "test-ceph: full output: $out"
else
	echo "test-ceph: PASS"
fi
exit "$rc"
