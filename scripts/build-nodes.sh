#!/usr/bin/env bash
# Builds what makes a lab node a Kubernetes node, besides the kubelet (which
# scripts/build-controlplane.sh builds with the control plane): containerd 2.x,
# its runc shim and ctr from the Go module proxy, the pause binary from the
# k8s.io/kubernetes module's own source (build/pause), and prometheus-operator
# with its config reloader and the Prometheus it is built against
# (controlplane/operator/go.mod) for the Prometheus it runs: Debian's Prometheus
# is built without Kubernetes service discovery, which the operator's scrape
# configurations need. runc and the CNI plugins are Debian's
# (scripts/install-system-deps.sh). Once per machine: the
# binaries live outside the clone, keyed by the versions, and .cache/nodes in the
# clone points at them. A cold build takes about 5 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
CONTAINERD_VERSION=v2.4.2
PAUSE_VERSION=3.10.2 # kubeadm's pause for Kubernetes v1.37
store=${NPE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/node-ping-exporter}/nodes
kubernetes=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' controlplane/go.mod)
sources=(controlplane/operator/go.mod controlplane/operator/go.sum scripts/build-nodes.sh)
key=$CONTAINERD_VERSION-$(
  { cat "${sources[@]}"; echo "$kubernetes $PAUSE_VERSION"; } | sha256sum | cut -c1-12
)
binaries=(containerd containerd-shim-runc-v2 ctr pause operator prometheus-config-reloader prometheus)
built() { for b in "${binaries[@]}"; do [ -x "$out/$b" ] || return 1; done; }
out=$store/$key
mkdir -p "$store" .cache
if built; then
  ln -sfn "$out" .cache/nodes
  exit 0
fi
for tool in go gcc; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "$tool is not installed: cannot build the lab's Kubernetes nodes; their tests will skip" >&2
    exit 0
  fi
done
echo "building containerd $CONTAINERD_VERSION, pause $PAUSE_VERSION and prometheus-operator" \
  "(once per machine; about 5 minutes cold)"
exec 9>"$store/.lock"
flock 9 # two clones building at once wait for one another
if ! built; then
  tmp=$(mktemp -d "$store/.build.XXXXXX") && chmod 755 "$tmp"
  trap 'rm -rf "$tmp"' EXIT # a failed build leaves nothing half-made in the store
  started=$(date +%s)
  # containerd's btrfs snapshotter needs libbtrfs headers; the lab uses overlayfs.
  for cmd in containerd containerd-shim-runc-v2 ctr; do
    GOBIN=$tmp go install -trimpath -tags no_btrfs -ldflags "-s -w" \
      "github.com/containerd/containerd/v2/cmd/$cmd@$CONTAINERD_VERSION"
  done
  # pause: the Kubernetes release's own source, built static as its Makefile does.
  source_dir=$(cd controlplane && go mod download k8s.io/kubernetes &&
    go list -m -f '{{.Dir}}' k8s.io/kubernetes)
  gcc -Os -Wall -Werror -static "-DVERSION=v$PAUSE_VERSION" -o "$tmp/pause" \
    "$source_dir/build/pause/linux/pause.c"
  module=github.com/prometheus-operator/prometheus-operator
  (cd controlplane/operator && go build -trimpath -ldflags "-s -w" -o "$tmp/" \
    "$module/cmd/operator" "$module/cmd/prometheus-config-reloader")
  # Prometheus as upstream builds it (static), with Kubernetes discovery only; no UI
  # assets (they need a Node.js build): the API and the rules are what is used.
  prometheus=$(cd controlplane/operator && go list -m -f '{{.Version}}' github.com/prometheus/prometheus)
  # Prometheus 3.x's Go module versions are v0.3MM.P: v0.313.1 is 3.13.1.
  release=3.$(echo "${prometheus#v0.3}" | cut -d. -f1 | sed 's/^0*//;s/^$/0/').${prometheus##*.}
  (cd controlplane/operator && CGO_ENABLED=0 go build -trimpath -o "$tmp/prometheus" \
    -tags "remove_all_sd enable_kubernetes_sd netgo" \
    -ldflags "-s -w -X github.com/prometheus/common/version.Version=$release" \
    github.com/prometheus/prometheus/cmd/prometheus)
  # The operator's CRDs, as its release ships them (../shared/crds has only some).
  operator_dir=$(cd controlplane/operator && go list -m -f '{{.Dir}}' "$module")
  cp -r "$operator_dir/example/prometheus-operator-crd-full" "$tmp/crds"
  chmod -R u+w "$tmp/crds"
  rm -rf "$out"
  mv "$tmp" "$out"
  echo "built in $(($(date +%s) - started)) s: $out"
fi
ln -sfn "$out" .cache/nodes
