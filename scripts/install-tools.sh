#!/usr/bin/env bash
# Builds the Go tools the chart checks use, from the Go module proxy, into
# .cache/bin; skips what is already built (a fresh machine pays ~5 min once).
set -euo pipefail
cd "$(dirname "$0")/.."
HELM3_VERSION=v3.19.0
HELM4_VERSION=v4.0.0
KUBE_LINTER_VERSION=v0.7.6
bin=.cache/bin
mkdir -p "$bin"
if ! command -v go >/dev/null 2>&1; then
  echo "Go is not installed: the chart checks will skip" >&2
  exit 0
fi
build() {  # name module version
  local name=$1 module=$2 version=$3 stamp="$bin/.$1-$3"
  [ -x "$bin/$name" ] && [ -e "$stamp" ] && return 0
  echo "building $name $version (go install $module@$version)"
  local tmp; tmp=$(mktemp -d)
  GOBIN="$tmp" GOFLAGS=-mod=mod go install "$module@$version"
  mv "$tmp"/* "$bin/$name"; rmdir "$tmp"
  rm -f "$bin/.$name-"*; touch "$stamp"
}
build helm3 helm.sh/helm/v3/cmd/helm "$HELM3_VERSION"
build helm4 helm.sh/helm/v4/cmd/helm "$HELM4_VERSION"
build kube-linter golang.stackrox.io/kube-linter/cmd/kube-linter "$KUBE_LINTER_VERSION"
