#!/usr/bin/env bash
# Installs what vdisk's tests and demo need: Debian packages (only those
# missing), Go modules, and the linters. Safe to run again; as root.
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(qemu-utils libnbd-bin nbdkit nbd-client fio python3-libnbd cryptsetup-bin
      e2fsprogs fuse3 util-linux procps genisoimage time
      prometheus systemd man-db curl)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "deps: installing ${missing[*]}"
	if [ "$(id -u)" != 0 ]; then
		echo "deps: need root to install Debian packages: ${missing[*]}" >&2
		exit 1
	fi
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v go >/dev/null; then
	for d in /usr/local/go/bin /usr/lib/go/bin; do [ -x "$d/go" ] && export PATH="$d:$PATH"; done
fi
command -v go >/dev/null || { echo "deps: Go 1.26 or later is needed (https://go.dev/dl); none found" >&2; exit 1; }

go mod download
gobin="$(go env GOPATH)/bin"
[ -x "$gobin/staticcheck" ] || go install honnef.co/go/tools/cmd/staticcheck@v0.8.2
# versitygw: the S3 server the object-store tests run against.
[ -x "$gobin/versitygw" ] || go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
