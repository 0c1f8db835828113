#!/usr/bin/env bash
# Installs the tools the checks use, into .cache: Helm 3, Helm 4, helm-docs, cosign
# and syft built from the Go module proxy, checkov from PyPI, stamp-suite (a STAMP implementation nobody
# here wrote, for the interoperability tests) from crates.io. Skips what is already there (a
# fresh machine pays a few minutes once).
set -euo pipefail
cd "$(dirname "$0")/.."
HELM3_VERSION=v3.19.0
HELM4_VERSION=v4.3.1
# The release checks (tests/test_release.py): signing, SBOM, the chart's README.
COSIGN_VERSION=v3.1.3
SYFT_VERSION=v1.57.2
HELM_DOCS_VERSION=v1.14.2
# Built once per machine, outside the clone (a fresh clone reuses them);
# .cache/bin and .cache/checkov in the clone point there.
store=${NPE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/node-ping-exporter}
bin=$store/bin
mkdir -p "$bin" .cache
ln -sfn "$bin" .cache/bin
build() {  # name module version
  local name=$1 module=$2 version=$3 stamp="$bin/.$1-$3"
  [ -x "$bin/$name" ] && [ -e "$stamp" ] && return 0
  echo "building $name $version (go install $module@$version)"
  local tmp; tmp=$(mktemp -d)
  GOBIN="$tmp" GOFLAGS=-mod=mod go install "$module@$version"
  mv "$tmp"/* "$bin/$name"; rmdir "$tmp"
  rm -f "$bin/.$name-"*; touch "$stamp"
}
if command -v go >/dev/null 2>&1; then
  build helm3 helm.sh/helm/v3/cmd/helm "$HELM3_VERSION"
  build helm4 helm.sh/helm/v4/cmd/helm "$HELM4_VERSION"
  build helm-docs github.com/norwoodj/helm-docs/cmd/helm-docs "$HELM_DOCS_VERSION"
  build cosign github.com/sigstore/cosign/v3/cmd/cosign "$COSIGN_VERSION"
  build syft github.com/anchore/syft/cmd/syft "$SYFT_VERSION"
else
  echo "Go is not installed: the chart checks will skip" >&2
fi

# stamp-suite (crates.io): about two minutes of cargo once.
STAMP_SUITE_VERSION=1.0.0
if command -v cargo >/dev/null 2>&1; then
  if [ ! -x "$bin/stamp-suite" ] || [ ! -e "$bin/.stamp-suite-$STAMP_SUITE_VERSION" ]; then
    echo "building stamp-suite $STAMP_SUITE_VERSION (cargo install)"
    tmp=$(mktemp -d)
    cargo install --quiet --locked --root "$tmp" "stamp-suite@$STAMP_SUITE_VERSION"
    mv "$tmp/bin/stamp-suite" "$bin/stamp-suite"; rm -rf "$tmp"
    rm -f "$bin/.stamp-suite-"*; touch "$bin/.stamp-suite-$STAMP_SUITE_VERSION"
  fi
else
  echo "cargo is not installed: the STAMP interoperability checks will skip" >&2
fi

# checkov (PyPI) in a virtualenv of its own: its dependencies must not move ours.
CHECKOV_VERSION=3.3.30
checkov=$store/checkov
if [ ! -e "$checkov/.checkov-$CHECKOV_VERSION" ]; then
  echo "installing checkov $CHECKOV_VERSION"
  rm -rf "$checkov"
  "${PYTHON:-python3}" -m venv "$checkov"
  "$checkov/bin/pip" install -q --disable-pip-version-check "checkov==$CHECKOV_VERSION"
  touch "$checkov/.checkov-$CHECKOV_VERSION"
fi
ln -sfn "$checkov" .cache/checkov
