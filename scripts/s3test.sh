#!/bin/bash
# s3test.sh: a throw-away S3 server (versitygw on a posix directory) for
# manual runs, benchmarks and end-to-end tests of s3:// images.
#
#   scripts/s3test.sh start [DIR] [ADDR]   start it (default DIR /tmp/vdisk-s3,
#                                          ADDR 127.0.0.1:7070), print the env
#   scripts/s3test.sh stop [DIR]           stop it
#
# `start` prints shell assignments for the AWS environment variables and
# VDISK_S3_ENDPOINT; use it as: eval "$(scripts/s3test.sh start)".
# The Go tests do not need this script: they start their own server.
set -euo pipefail

VERSION=v1.8.0
ACCESS=vdisktestaccess
SECRET=vdisktestsecretkey0123456789
BUCKET=vdisk-test

cmd=${1:-}
dir=${2:-/tmp/vdisk-s3}
addr=${3:-127.0.0.1:7070}

find_bin() {
	if command -v versitygw >/dev/null 2>&1; then command -v versitygw; return; fi
	gobin=$(go env GOBIN)
	[ -n "$gobin" ] || gobin="$(go env GOPATH | cut -d: -f1)/bin"
	if [ ! -x "$gobin/versitygw" ]; then
		(cd / && GOFLAGS=-mod=mod go install "github.com/versity/versitygw/cmd/versitygw@$VERSION") >&2
	fi
	echo "$gobin/versitygw"
}

case "$cmd" in
start)
	bin=$(find_bin)
	mkdir -p "$dir/data" "$dir/data/$BUCKET"
	if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
		echo "s3test: already running (pid $(cat "$dir/pid"))" >&2
	else
		ROOT_ACCESS_KEY=$ACCESS ROOT_SECRET_KEY=$SECRET \
			nohup "$bin" --port "$addr" posix "$dir/data" >"$dir/log" 2>&1 &
		echo $! >"$dir/pid"
		i=0
		until (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null; do
			i=$((i + 1))
			if [ $i -gt 300 ]; then
				echo "s3test: versitygw did not start; see $dir/log" >&2
				exit 1
			fi
			sleep 0.1
		done
	fi
	echo "export AWS_ACCESS_KEY_ID=$ACCESS AWS_SECRET_ACCESS_KEY=$SECRET AWS_REGION=us-east-1"
	echo "export VDISK_S3_ENDPOINT=http://$addr VDISK_S3_BUCKET=$BUCKET"
	;;
stop)
	if [ -f "$dir/pid" ]; then
		kill "$(cat "$dir/pid")" 2>/dev/null || true
		rm -f "$dir/pid"
	fi
	;;
*)
	echo "usage: $0 start [DIR] [ADDR] | stop [DIR]" >&2
	exit 2
	;;
esac
