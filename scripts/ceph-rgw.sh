#!/bin/bash
# ceph-rgw.sh: a throw-away one-node Ceph cluster (one mon, one OSD on
# memstore, radosgw) entirely under DIR, for running vdisk's S3 tests
# against Ceph RGW (scripts/test-ceph.sh). Not part of CI. Runs as root;
# installs radosgw, ceph-mon and ceph-osd with apt-get if they are missing.
#
#   scripts/ceph-rgw.sh start DIR [PORT]   create and start the cluster, RGW
#                                          on 127.0.0.1:PORT (default 7480),
#                                          an S3 user and a bucket; print the
#                                          env (like scripts/s3test.sh)
#   scripts/ceph-rgw.sh stop DIR           stop every daemon of DIR
#   scripts/ceph-rgw.sh stop-rgw DIR       stop only radosgw (store outage)
#   scripts/ceph-rgw.sh start-rgw DIR      start radosgw again, wait for it
#   scripts/ceph-rgw.sh env DIR            print the env again
#
# Use it as: eval "$(scripts/ceph-rgw.sh start /tmp/ceph)". DIR should be
# new or a directory this script made; `start` on a DIR whose cluster
# runs only prints the env. The cluster: no cephx (auth none), mon on
# 127.0.0.1 (v2 on PORT+1, v1 on PORT+2), the OSD keeps everything in
# memory (osd objectstore = memstore: no disk, no device-mapper), pools of
# size 1 with few PGs, small memory settings. Logs are in DIR/log.
set -euo pipefail

ACCESS=vdiskcephaccess
SECRET=vdiskcephsecretkey0123456789
BUCKET=vdisk-test
REGION=us-east-1

cmd=${1:-}
dir=${2:-}
usage() {
	echo "usage: $0 start DIR [PORT] | stop DIR | stop-rgw DIR | start-rgw DIR | env DIR" >&2
	exit 2
}
[ -n "$cmd" ] && [ -n "$dir" ] || usage
[ "$cmd" != start ] || mkdir -p "$dir"
[ -d "$dir" ] || { echo "ceph-rgw: no directory $dir" >&2; exit 1; }
dir=$(cd "$dir" && pwd)
conf=$dir/ceph.conf

log() { echo "ceph-rgw: $*" >&2; }
die() {
	log "$*"
	exit 1
}

# ceph runs the ceph CLI on this cluster, bounded in time.
ceph() { timeout 60 /usr/bin/ceph -c "$conf" --connect-timeout 30 "$@"; }

# pid_of NAME prints the pid in DIR/run/NAME.pid if that process runs.
pid_of() {
	local f=$dir/run/$1.pid p
	[ -f "$f" ] || return 1
	p=$(cat "$f")
	[ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 1
	echo "$p"
}

# our_pids prints the pids of every process started with this DIR's
# ceph.conf (daemons whose pid file is gone included).
our_pids() {
	local p
	for p in /proc/[0-9]*; do
		{ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -qF -- "-c $conf " && echo "${p#/proc/}"
	done
	return 0
}

# stop_pids PID...: SIGTERM, wait up to 20 s, then SIGKILL and wait.
stop_pids() {
	local p i
	[ $# -gt 0 ] || return 0
	kill "$@" 2>/dev/null || true
	for i in $(seq 200); do
		for p in "$@"; do
			kill -0 "$p" 2>/dev/null && break
			p=
		done
		[ -z "$p" ] && return 0
		sleep 0.1
	done
	kill -9 "$@" 2>/dev/null || true
	for i in $(seq 100); do
		for p in "$@"; do
			kill -0 "$p" 2>/dev/null && break
			p=
		done
		[ -z "$p" ] && return 0
		sleep 0.1
	done
	log "could not kill $*"
	return 1
}

port() { cat "$dir/port"; }

mon_up() { ceph mon stat >/dev/null 2>&1; }
osd_up() { ceph osd dump 2>/dev/null | grep -q '^osd\.0 up'; }

# rgw_answers: radosgw answers an anonymous S3 request (any HTTP status).
rgw_answers() {
	local code
	code=$(curl -s -o /dev/null -m 5 -w '%{http_code}' "http://127.0.0.1:$(port)/" 2>/dev/null) || return 1
	[ "$code" != 000 ]
}

# run NAME CMD...: start a daemon in the foreground of its own session,
# in the background of this script; its pid goes to DIR/run/NAME.pid and
# its output to DIR/log/NAME.out.
run() {
	local name=$1
	shift
	setsid "$@" -f </dev/null >>"$dir/log/$name.out" 2>&1 &
	echo $! >"$dir/run/$name.pid"
}

# wait_for NAME WHAT SECONDS CMD...: wait until CMD succeeds, failing if
# daemon NAME exits or SECONDS pass.
wait_for() {
	local name=$1 what=$2 secs=$3 i
	shift 3
	for i in $(seq $((secs * 5))); do
		"$@" && return 0
		pid_of "$name" >/dev/null || die "$name exited before $what; see $dir/log/"
		sleep 0.2
	done
	die "no $what after ${secs}s; see $dir/log/"
}

start_rgw() {
	if pid_of rgw >/dev/null; then
		return 0
	fi
	run rgw radosgw -c "$conf" -n client.rgw.a
	wait_for rgw "answer from radosgw on 127.0.0.1:$(port)" 120 rgw_answers
}

stop_rgw() {
	local p
	if p=$(pid_of rgw); then
		stop_pids "$p"
	fi
	rm -f "$dir/run/rgw.pid"
	# The port is closed once the process is gone; check anyway.
	if rgw_answers; then
		die "something still answers on 127.0.0.1:$(port)"
	fi
}

print_env() {
	echo "export AWS_ACCESS_KEY_ID=$ACCESS AWS_SECRET_ACCESS_KEY=$SECRET AWS_REGION=$REGION"
	echo "export VDISK_S3_ENDPOINT=http://127.0.0.1:$(port) VDISK_S3_BUCKET=$BUCKET"
}

install_packages() {
	local missing=() b
	for b in radosgw ceph-mon ceph-osd; do
		command -v "$b" >/dev/null 2>&1 || missing+=("$b")
	done
	command -v ceph >/dev/null 2>&1 || missing+=(ceph-common)
	command -v monmaptool >/dev/null 2>&1 || missing+=(ceph-base)
	[ ${#missing[@]} -eq 0 ] && return 0
	log "installing ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
		radosgw ceph-mon ceph-osd ceph-common ceph-base >&2 ||
		{ apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
			radosgw ceph-mon ceph-osd ceph-common ceph-base >&2; }
}

write_conf() {
	local rgwport=$1 fsid
	fsid=$(cat /proc/sys/kernel/random/uuid)
	cat >"$conf" <<EOF
# Written by scripts/ceph-rgw.sh: a throw-away one-node cluster.
[global]
fsid = $fsid
mon initial members = a
mon host = [v2:127.0.0.1:$((rgwport + 1)),v1:127.0.0.1:$((rgwport + 2))]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
run dir = $dir/run
admin socket = $dir/run/\$name.asok
log file = $dir/log/\$name.log
keyring = /dev/null
mon data = $dir/\$name
osd data = $dir/\$name
rgw data = $dir/\$name
# One OSD: one copy, few PGs.
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon max pg per osd = 1000
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
# Small memory.
osd objectstore = memstore
memstore device bytes = 8589934592
osd memory target = 939524096
osd op num shards = 1
osd op num threads per shard = 2
mon osd full ratio = 0.99
mon osd backfillfull ratio = 0.98
mon osd nearfull ratio = 0.97

[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$rgwport
rgw thread pool size = 64
# radosgw's built-in default is a secure (cephx) mon connection.
ms mon client mode = crc
EOF
}

start_cluster() {
	local rgwport=$1 fsid i uuid id
	[ -z "$(ls -A "$dir")" ] || die "$dir is not empty and holds no cluster of this script"
	install_packages
	for i in "$rgwport" $((rgwport + 1)) $((rgwport + 2)); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$i") 2>/dev/null; then
			die "port $i on 127.0.0.1 is in use"
		fi
	done
	mkdir -p "$dir/run" "$dir/log" "$dir/mon.a" "$dir/osd.0" "$dir/client.rgw.a"
	echo "$rgwport" >"$dir/port"
	write_conf "$rgwport"
	fsid=$(sed -n 's/^fsid = //p' "$conf")

	log "mon"
	monmaptool --create --fsid "$fsid" \
		--addv a "[v2:127.0.0.1:$((rgwport + 1)),v1:127.0.0.1:$((rgwport + 2))]" \
		"$dir/monmap" >"$dir/log/monmaptool.log" 2>&1
	ceph-mon -c "$conf" -i a --mkfs --monmap "$dir/monmap" >"$dir/log/mkfs-mon.log" 2>&1 ||
		die "ceph-mon --mkfs failed; see $dir/log/mkfs-mon.log"
	run mon ceph-mon -c "$conf" -i a
	wait_for mon "answer from the mon" 60 mon_up

	log "osd (memstore)"
	uuid=$(cat /proc/sys/kernel/random/uuid)
	id=$(ceph osd new "$uuid")
	[ "$id" = 0 ] || die "osd new gave id $id, want 0"
	ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$uuid" >"$dir/log/mkfs-osd.log" 2>&1 ||
		die "ceph-osd --mkfs failed; see $dir/log/mkfs-osd.log"
	run osd ceph-osd -c "$conf" -i 0
	wait_for osd "osd.0 up" 120 osd_up

	log "radosgw on 127.0.0.1:$rgwport"
	start_rgw

	log "S3 user and bucket"
	radosgw-admin -c "$conf" user create --uid=vdisk --display-name=vdisk \
		--access-key="$ACCESS" --secret-key="$SECRET" >"$dir/log/user.json" 2>"$dir/log/radosgw-admin.log" ||
		die "radosgw-admin user create failed; see $dir/log/radosgw-admin.log"
	local code
	for i in $(seq 30); do
		code=$(curl -s -o "$dir/log/bucket.xml" -w '%{http_code}' -m 30 -X PUT \
			--aws-sigv4 "aws:amz:$REGION:s3" --user "$ACCESS:$SECRET" \
			-H "x-amz-content-sha256: $(sha256sum </dev/null | cut -d' ' -f1)" \
			"http://127.0.0.1:$rgwport/$BUCKET") || code=000
		case $code in 200 | 409) break ;; esac
		[ "$i" -lt 30 ] || die "create bucket: HTTP $code: $(cat "$dir/log/bucket.xml" 2>/dev/null)"
		sleep 1
	done
	log "up: $(ceph -s --format json 2>/dev/null | grep -o '"num_up_osds":[0-9]*' || true)"
}

# stop_all stops every daemon of DIR.
stop_all() {
	local pids p n left
	pids=$(our_pids)
	for n in rgw osd mon; do
		p=$(pid_of "$n") && pids="$pids $p"
	done
	# shellcheck disable=SC2086 # a list of pids
	stop_pids $(echo $pids | tr ' ' '\n' | sort -u)
	rm -f "$dir"/run/*.pid
	left=$(our_pids)
	[ -z "$left" ] || die "still running: $left"
}

case "$cmd" in
start)
	[ "$(id -u)" = 0 ] || die "run as root"
	if pid_of mon >/dev/null; then
		log "already running in $dir"
		start_rgw
	else
		# A start that fails leaves nothing running.
		trap 'log "start failed; stopping what runs"; stop_all' EXIT
		start_cluster "${3:-7480}"
		trap - EXIT
	fi
	print_env
	;;
stop)
	stop_all
	;;
stop-rgw)
	[ -f "$conf" ] || die "no cluster in $dir"
	stop_rgw
	;;
start-rgw)
	[ -f "$conf" ] || die "no cluster in $dir"
	start_rgw
	;;
env)
	[ -f "$conf" ] || die "no cluster in $dir"
	print_env
	;;
*) usage ;;
esac
