#!/usr/bin/env bash
# Builds the agent's image for amd64 and arm64 without a Docker engine and without
# a shell, package manager, perl or locales in it: each architecture's root
# filesystem is assembled from Debian bookworm .debs and wheels
# (scripts/assemble-rootfs.sh), committed `from scratch` with buildah (vfs storage),
# and the two images joined in one manifest list:
#
#   localhost/node-ping-exporter:VERSION-amd64, …-arm64   the images
#   localhost/node-ping-exporter:VERSION                  the manifest list
#
# Each image then runs the agent's --version and --check-config (arm64 under
# qemu-user) and its contents are checked. ARCHES="amd64" builds one only.
# `--source-digest` prints the digest of what the image is built from. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
REPOSITORY=localhost/node-ping-exporter
IMAGE=$REPOSITORY:$VERSION
host_arch=$(case "$(uname -m)" in aarch64) echo arm64 ;; *) echo amd64 ;; esac)
# The first architecture also runs the import trace: the host's by default.
ARCHES=${ARCHES:-$host_arch $([ "$host_arch" = amd64 ] && echo arm64 || echo amd64)}
buildah() { command buildah --storage-driver vfs "$@"; }

# What the image is built from, as one digest (labelled on the image): the lab
# rebuilds an image whose label differs from the tree's.
source_digest() {
  find requirements.txt pyproject.toml README.md exporter scripts/build-image.sh \
    scripts/assemble-rootfs.sh scripts/trace-imports.py scripts/binfmt-arm64.sh -type f \
    ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum \
    | sha256sum | cut -c1-16
}
if [ "${1:-}" = "--source-digest" ]; then source_digest; exit 0; fi
DIGEST=$(source_digest)
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
# Where the source is: SOURCE_URL (a release may set it), else the clone's origin,
# without any user:token@ it may carry.
SOURCE_URL=${SOURCE_URL:-$(git remote get-url origin 2>/dev/null | sed -E 's|//[^/@]*@|//|' || true)}
SOURCE_URL=${SOURCE_URL:-unknown}
CREATED=$(git log -1 --format=%ct 2>/dev/null || date +%s)  # reproducible: the commit's time

command -v buildah >/dev/null || { echo "build-image: buildah is not installed (apt-get install buildah)" >&2; exit 1; }
case " $ARCHES " in *" arm64 "*) [ "$host_arch" = arm64 ] || scripts/binfmt-arm64.sh ;; esac

work=$(mktemp -d)
containers=()
committed=()
cleanup() {
  local status=$?
  for ctr in "${containers[@]}"; do buildah rm "$ctr" >/dev/null 2>&1 || true; done
  rm -rf "$work"
  # A failed check takes the images this run made with it (and the list naming
  # them): their labels must not let the lab take them for a good build of this tree.
  if [ "$status" -ne 0 ] && [ "${#committed[@]}" -gt 0 ]; then
    for image in "${committed[@]}"; do buildah rmi -f "$image" >/dev/null 2>&1 || true; done
    buildah manifest rm "$IMAGE" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

for arch in $ARCHES; do
  echo "assembling the $arch root filesystem"
  scripts/assemble-rootfs.sh "$arch" "$work/$arch" >/dev/null
done
# Bytecode for what the agent imports, listed by the first image's own interpreter
# (chrooted as nobody; -B: the trace writes nothing), then compiled in every tree.
triplet() { [ "$1" = arm64 ] && echo aarch64-linux-gnu || echo x86_64-linux-gnu; }
tracer=${ARCHES%% *}
chroot --userspec=65534:65534 "$work/$tracer" /usr/bin/python3.11 -IB \
  -c "$(cat scripts/trace-imports.py)" > "$work/imports"
for arch in $ARCHES; do
  sed "s/$(triplet "$tracer")/$(triplet "$arch")/g" "$work/imports" > "$work/imports-$arch"
  compiled=$(scripts/assemble-rootfs.sh --compile "$work/imports-$arch" "$work/$arch")
  echo "$arch: bytecode for $compiled imported modules"
done

for arch in $ARCHES; do
  ctr=$(buildah from --arch "$arch" scratch)
  containers+=("$ctr")
  mnt=$(buildah mount "$ctr")
  cp -a "$work/$arch/." "$mnt/"
  buildah umount "$ctr" >/dev/null
  metadata=()
  for pair in "title=node-ping-exporter" \
    "description=Per-pair ICMP loss and RTT between Kubernetes nodes, for Prometheus" \
    "source=$SOURCE_URL" "revision=$REVISION" "version=$VERSION" "licenses=Apache-2.0" \
    "created=$(date -u -d "@$CREATED" +%Y-%m-%dT%H:%M:%SZ)" \
    "base.name=debian:bookworm (packages, no base image)"; do
    metadata+=(--label "org.opencontainers.image.$pair" --annotation "org.opencontainers.image.$pair")
  done
  buildah config --arch "$arch" --os linux --user 65534:65534 --port 9798 \
    --entrypoint '["/opt/node-ping-exporter/bin/node-ping-exporter"]' --cmd '' \
    --env PATH=/opt/node-ping-exporter/bin:/usr/bin --env LANG=C.UTF-8 \
    --label "io.node-ping-exporter.source-digest=$DIGEST" "${metadata[@]}" "$ctr"
  previous=$(buildah images --quiet "$IMAGE-$arch" 2>/dev/null || true)
  buildah commit --quiet --format oci --timestamp "$CREATED" "$ctr" "$IMAGE-$arch" >/dev/null
  committed+=("$IMAGE-$arch")
  # The image this one replaces, now untagged (vfs keeps a full copy of each);
  # the same commit can build the very same image, which stays.
  if [ -n "$previous" ] && [ "$previous" != "$(buildah images --quiet "$IMAGE-$arch")" ]; then
    buildah rmi "$previous" >/dev/null 2>&1 || true
  fi
done

# Inside each image: the version, a valid configuration, a bad one refused, and
# nothing but the agent and the interpreter it needs.
# (Each output is assigned before it is printed: `echo "$(cmd)"` would hide a failure.)
run() {  # CONTAINER ARGS…: the agent inside the image (arm64 under qemu-user)
  local ctr=$1; shift
  buildah run --isolation chroot "$ctr" -- node-ping-exporter "$@"
}
for arch in $ARCHES; do
  ctr=$(buildah from --arch "$arch" "$IMAGE-$arch")
  containers+=("$ctr")
  out=$(run "$ctr" --version)
  echo "$arch: $out"
  out=$(run "$ctr" --check-config --node-name image-check --peer a=10.0.0.1 --peer b=fd00::2)
  echo "$arch: $out"
  # Public CAs where OpenSSL looks by default (diagnose against an HTTPS Prometheus).
  out=$(buildah run --isolation chroot "$ctr" -- python3.11 -IB -c \
    'import ssl; print(len(ssl.create_default_context().get_ca_certs()))')
  [ "$out" -gt 100 ] || { echo "build-image: $arch: OpenSSL finds $out CA certificates" >&2; exit 1; }
  echo "$arch: CA certificates found by OpenSSL: $out"
  if out=$(run "$ctr" --check-config --interval 0 2>&1); then
    echo "build-image: $arch: a bad configuration was accepted" >&2; exit 1
  fi
  echo "$arch: bad configuration refused: ${out%%$'\n'*}"  # buildah adds its own lines
  mnt=$(buildah mount "$ctr")
  for absent in bin/sh usr/bin/sh bin/bash usr/bin/perl usr/bin/apt-get usr/bin/dpkg usr/share/locale usr/lib/locale; do
    if [ -e "$mnt/$absent" ] || [ -L "$mnt/$absent" ]; then
      echo "build-image: $arch: the image holds /$absent" >&2; exit 1
    fi
  done
  site=$mnt/opt/node-ping-exporter/lib/python3.11/site-packages
  packages=$(cd "$site" && ls -d ./*.dist-info | sed 's|^\./||; s|-[0-9].*||' | sort | tr '\n' ' ')
  case " $packages " in
    *" node_ping_lab "* | *" aiohttp "*) echo "build-image: $arch: unwanted packages: $packages" >&2; exit 1 ;;
  esac
  echo "$arch: python packages: $packages"
  buildah umount "$ctr" >/dev/null
  [ "$(buildah inspect --format '{{.OCIv1.Config.User}}' "$IMAGE-$arch")" = "65534:65534" ] \
    || { echo "build-image: $arch: the image does not run as 65534" >&2; exit 1; }
  echo "image $IMAGE-$arch: $(buildah images --format '{{.Size}}' "$IMAGE-$arch")"
done

# One name for every architecture: the manifest list (replacing a previous one).
buildah manifest rm "$IMAGE" >/dev/null 2>&1 || buildah rmi -f "$IMAGE" >/dev/null 2>&1 || true
buildah manifest create "$IMAGE" >/dev/null
for arch in $ARCHES; do
  buildah manifest add --arch "$arch" --os linux "$IMAGE" "containers-storage:$IMAGE-$arch" >/dev/null
done
echo "manifest list $IMAGE: $ARCHES"
