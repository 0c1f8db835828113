#!/usr/bin/env bash
# Installs the Debian packages the tests and benchmarks use, skipping what is present.
# Needs root for apt-get; without root it only reports what is missing (the
# namespace tests then skip themselves with the reason).
set -euo pipefail

need=()
for pair in ip:iproute2 nft:nftables fping:fping curl:curl ping:iputils-ping setpriv:util-linux \
  prometheus:prometheus promtool:prometheus prometheus-node-exporter:prometheus-node-exporter \
  buildah:buildah qemu-aarch64-static:qemu-user-static aarch64-linux-gnu-strip:binutils-aarch64-linux-gnu openssl:openssl runc:runc docker-registry:docker-registry \
  gcc:gcc nsenter:util-linux; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair##*:}")
done
# The image: buildah; arm64's is stripped with binutils for aarch64 and run under
# qemu-user (scripts/build-image.sh). The lab's Kubernetes nodes: CNI plugins (containerd's loopback network) and a static
# libc for the pause binary (scripts/build-nodes.sh).
[ -x /usr/lib/cni/loopback ] || need+=(containernetworking-plugins)
compgen -G "/usr/lib/*/libc.a" >/dev/null || need+=(libc6-dev)
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u | sed '/^$/d')
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "missing Debian packages (install them as root): ${need[*]}" >&2
  fi
fi
command -v go >/dev/null 2>&1 || echo "Go is not installed: the delayed-responder tests and the benchmark will skip" >&2
exit 0
