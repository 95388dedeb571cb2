#!/usr/bin/env bash
# Builds the Debian package dist/vdisk_<version>_amd64.deb with nfpm
# (github.com/goreleaser/nfpm/v2, installed here if missing): /usr/bin/vdisk,
# the systemd units, man pages generated from the commands, bash/zsh/fish
# completions and the README. Prints the package's path.
#
#   VERSION   the package and program version (default: cli.Version with
#             its "-dev" spelled "~dev", so that a release sorts after it)
#   DIST      where the .deb goes (default: dist)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
NFPM_VERSION=v2.48.0

export PATH="$(go env GOPATH)/bin:$PATH"
if ! go version -m "$(go env GOPATH)/bin/nfpm" 2>/dev/null | grep -q "goreleaser/nfpm/v2[[:space:]]*$NFPM_VERSION"; then
	echo "package: installing nfpm $NFPM_VERSION" >&2
	(cd / && GOFLAGS= go install "github.com/goreleaser/nfpm/v2/cmd/nfpm@$NFPM_VERSION")
fi

if [ -z "${VERSION:-}" ]; then
	VERSION=$(sed -n 's/^var Version = "\(.*\)"$/\1/p' internal/cli/root.go)
	VERSION=${VERSION//-/\~}
fi
[ -n "$VERSION" ] || { echo "package: no version" >&2; exit 1; }
export VERSION
commit=$(git rev-parse HEAD 2>/dev/null || true)
if [ -n "$commit" ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
	commit="$commit+dirty"
fi
dist=${DIST:-dist}
mkdir -p "$dist"
dist=$(cd "$dist" && pwd)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
CGO_ENABLED=0 go build -trimpath \
	-ldflags "-s -w -X vdisk/internal/cli.Version=$VERSION -X vdisk/internal/cli.Commit=$commit" \
	-o "$stage/vdisk" ./cmd/vdisk
"$stage/vdisk" gen-man "$stage/man"
gzip -9n "$stage"/man/*.1
mkdir -p "$stage/completions"
"$stage/vdisk" completion bash >"$stage/completions/vdisk.bash"
"$stage/vdisk" completion zsh >"$stage/completions/_vdisk"
"$stage/vdisk" completion fish >"$stage/completions/vdisk.fish"
cp -r packaging/systemd "$stage/systemd"
cp README.md packaging/deb/serve.conf.example packaging/deb/postinst.sh "$stage/"

deb="$dist/vdisk_${VERSION}_amd64.deb"
rm -f "$deb"
(cd "$stage" && nfpm package --config "$root/packaging/deb/nfpm.yaml" --packager deb --target "$deb" >&2)
echo "$deb"
