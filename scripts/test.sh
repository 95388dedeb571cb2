#!/usr/bin/env bash
# Runs every vdisk test: installs what is missing, then gofmt, go vet,
# staticcheck, and go test -race over the whole module (the real-peer and
# kernel tests included; they need root, as CI has).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
export PATH="$(go env GOPATH)/bin:$PATH"

echo "== gofmt"
bad=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$bad" ]; then echo "gofmt would change: $bad" >&2; exit 1; fi
echo "== go vet"
go vet ./...
echo "== staticcheck"
staticcheck ./...
echo "== go test -race"
go test -race -count=1 -timeout 20m ./...
