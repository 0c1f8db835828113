#!/usr/bin/env bash
# Builds the container image without a Docker engine: buildah (vfs storage,
# chroot isolation) from a Debian bookworm base made with debootstrap. The base
# is cached in $NPE_IMAGE_CACHE (default /var/cache/node-ping-exporter) and in
# buildah's storage, so only a fresh machine pays for debootstrap.
# Then runs the agent's --version and --check-config inside the image and
# prints the image size. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE=localhost/node-ping-exporter:$VERSION
BASE=localhost/node-ping-exporter-base:bookworm
CACHE=${NPE_IMAGE_CACHE:-/var/cache/node-ping-exporter}
BASE_TAR=$CACHE/debian-bookworm-minbase.tar
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
buildah() { command buildah --storage-driver vfs "$@"; }

# What the image is built from, as one digest (labelled on the image): the lab
# rebuilds an image whose label differs from the tree's (`--source-digest` prints it).
source_digest() {
  find Dockerfile requirements.txt pyproject.toml README.md exporter scripts/build-image.sh -type f \
    ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum \
    | sha256sum | cut -c1-16
}
if [ "${1:-}" = "--source-digest" ]; then source_digest; exit 0; fi
DIGEST=$(source_digest)

for tool in buildah debootstrap; do
  command -v "$tool" >/dev/null || { echo "build-image: '$tool' is not installed (apt-get install $tool)" >&2; exit 1; }
done

if ! buildah inspect --type image "$BASE" >/dev/null 2>&1; then
  if [ ! -s "$BASE_TAR" ]; then
    echo "debootstrap: Debian bookworm minbase (cached in $BASE_TAR)"
    mkdir -p "$CACHE"
    rootfs=$(mktemp -d)
    debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
      || { tail -20 "$CACHE/debootstrap.log" >&2; rm -rf "$rootfs"; exit 1; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -cf "$BASE_TAR.tmp" . && mv "$BASE_TAR.tmp" "$BASE_TAR"
    rm -rf "$rootfs"
  fi
  ctr=$(buildah from scratch)
  mnt=$(buildah mount "$ctr")
  tar -C "$mnt" -xf "$BASE_TAR"
  buildah umount "$ctr" >/dev/null
  buildah config --cmd /bin/bash "$ctr"
  buildah commit --quiet "$ctr" "$BASE" >/dev/null
  buildah rm "$ctr" >/dev/null
fi

# pip inside the build trusts what pip on this host trusts (a TLS-inspecting
# proxy's CA, say): the bundle is mounted for the build stage, never copied in.
ca_args=()
host_ca=${PIP_CERT:-${SSL_CERT_FILE:-}}
if [ -n "$host_ca" ] && [ -s "$host_ca" ]; then
  ca_args=(--volume "$host_ca:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
fi

echo "building $IMAGE from $BASE"
buildah bud --quiet --isolation chroot --layers=false --build-arg "BASE_IMAGE=$BASE" \
  --build-arg "VERSION=$VERSION" --label "io.node-ping-exporter.source-digest=$DIGEST" \
  "${ca_args[@]}" -t "$IMAGE" -f Dockerfile . >/dev/null

# Inside the image: the version, a valid configuration, and a bad one refused.
# A check that fails takes the image with it: its source-digest label must not let
# the lab take it for a good build of this tree.
ctr=$(buildah from "$IMAGE")
trap 'status=$?; buildah rm "$ctr" >/dev/null 2>&1 || true
  [ "$status" -eq 0 ] || buildah rmi -f "$IMAGE" >/dev/null 2>&1 || true' EXIT
run() { buildah run --isolation chroot "$ctr" -- "$@"; }
run node-ping-exporter --version
run node-ping-exporter --check-config --node-name image-check --peer a=10.0.0.1 --peer b=fd00::2
if out=$(run node-ping-exporter --check-config --interval 0 2>&1); then
  echo "build-image: a bad configuration was accepted" >&2; exit 1
fi
echo "bad configuration refused: $out"
# The agent alone: its package and command, nothing of the lab (the node-ping-lab
# distribution, lab/pyproject.toml), whatever pyproject.toml or the Dockerfile say.
read -r -d '' contents_py <<'PY' || true
import importlib.metadata, importlib.util, pathlib, sys
files = importlib.metadata.distribution("node-ping-exporter").files or []
packages = {f.parts[0] for f in files if f.parts[0] != ".." and not f.parts[0].endswith(".dist-info")}
commands = {p.name for p in pathlib.Path(sys.prefix, "bin").glob("node-ping-*")}
lab = "present" if importlib.util.find_spec("lab") else "absent"
print(f"packages: {' '.join(sorted(packages))}; commands: {' '.join(sorted(commands))}; lab: {lab}")
PY
contents=$(run python3 -c "$contents_py")
echo "image contents: $contents"
[ "$contents" = "packages: exporter; commands: node-ping-exporter; lab: absent" ] \
  || { echo "build-image: the image holds more than the agent" >&2; exit 1; }
[ "$(buildah inspect --format '{{.OCIv1.Config.User}}' "$IMAGE")" = "65534:65534" ] \
  || { echo "build-image: the image does not run as 65534" >&2; exit 1; }
size=$(buildah images --format '{{.Size}}' "$IMAGE")
echo "image $IMAGE: $size"
