#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler and kubelet from
# the k8s.io/kubernetes Go module (controlplane/go.mod pins the release and its
# staging modules), and etcd + etcdctl at the version kubeadm pins for that release
# (controlplane/etcd/go.mod), once per machine: the binaries live outside the
# clone, keyed by the go.mod/go.sum files, and .cache/controlplane in the clone
# points at them. A cold build downloads the modules (~0.5 GB) and compiles for
# about 10 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
store=${NPE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/node-ping-exporter}/controlplane
version=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' controlplane/go.mod)
sources=(controlplane/go.mod controlplane/go.sum controlplane/etcd/go.mod controlplane/etcd/go.sum)
key=$version-$(cat "${sources[@]}" | sha256sum | cut -c1-12)
binaries=(kube-apiserver kube-controller-manager kube-scheduler kubelet etcd etcdctl)
built() { for b in "${binaries[@]}"; do [ -x "$out/$b" ] || return 1; done; }
out=$store/$key
mkdir -p "$store" .cache
if built; then
  ln -sfn "$out" .cache/controlplane
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "Go is not installed: cannot build the control plane; its tests will skip" >&2
  exit 0
fi
echo "building kube-apiserver, kube-controller-manager, kube-scheduler, kubelet $version and etcd from the Go module" \
  "proxy (once per machine; about 10 minutes cold)"
exec 9>"$store/.lock"
flock 9  # two clones building at once wait for one another
if ! built; then
  major=${version#v}; minor=${major#*.}; major=${major%%.*}; minor=${minor%%.*}
  pkg=k8s.io/component-base/version
  tmp=$(mktemp -d "$store/.build.XXXXXX")
  started=$(date +%s)
  (cd controlplane && go build -trimpath -o "$tmp/" \
    -ldflags "-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet)
  (cd controlplane/etcd && go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3 &&
    go build -trimpath -ldflags "-s -w" -o "$tmp/etcdctl" go.etcd.io/etcd/etcdctl/v3)
  rm -rf "$out"
  mv "$tmp" "$out"
  echo "built in $(( $(date +%s) - started )) s: $out"
fi
ln -sfn "$out" .cache/controlplane
