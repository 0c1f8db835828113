#!/usr/bin/env bash
# The image's root filesystem for one architecture, without a shell, a package
# manager, perl or locales: Debian bookworm's CPython 3.11 and the few libraries it
# and the agent's wheels link, extracted from their .debs (fetched with a private apt
# state, so the host's dpkg is not touched and no foreign architecture is added),
# the runtime dependencies from their wheels for that architecture, and the agent.
#
#   scripts/assemble-rootfs.sh amd64|arm64 DIR
#
# Nothing here runs code of the target architecture: arm64 is assembled on amd64.
# Bytecode is compiled only for the modules the agent imports (scripts/trace-imports.py
# lists them, run by build-image.sh with the amd64 image's own interpreter):
#
#   scripts/assemble-rootfs.sh --compile LIST DIR
#
# compiles the files LIST names (paths inside the image) in DIR.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$here/.venv/bin/python}
if [ "${1:-}" = "--compile" ]; then
  list=${2:?usage: assemble-rootfs.sh --compile LIST DIR} root=${3:?usage: assemble-rootfs.sh --compile LIST DIR}
  # Bytecode is the same on every architecture for one CPython minor version: any
  # 3.11 compiles it. unchecked-hash: valid whatever the files' times in the layer.
  "$python" -c 'import sys; assert sys.version_info[:2] == (3, 11), "compiling needs CPython 3.11"'
  while read -r file; do if [ -f "$root$file" ]; then echo "$root$file"; fi; done < "$list" \
    | "$python" -m compileall -q -i - -s "$root" -p / --invalidation-mode unchecked-hash >/dev/null
  find "$root" -name '*.pyc' -newer "$list" | wc -l
  exit 0
fi
arch=${1:?usage: assemble-rootfs.sh amd64|arm64 DIR}
root=${2:?usage: assemble-rootfs.sh amd64|arm64 DIR}
case "$arch" in
  amd64) machine=x86_64 ;;
  arm64) machine=aarch64 ;;
  *) echo "assemble-rootfs.sh: architecture '$arch': amd64 or arm64" >&2; exit 2 ;;
esac
state=${XDG_CACHE_HOME:-$HOME/.cache}/node-ping-exporter/apt-$arch
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Runtime .debs: the interpreter and what it, its extension modules and the wheels
# link (checked with ldd); libpython3.11-stdlib's dependencies on sqlite, ncurses,
# readline, libdb and krb5 serve modules the agent never imports, removed below.
packages=(libc6 libgcc-s1 libssl3 zlib1g libexpat1 libbz2-1.0 liblzma5 libffi8 libuuid1
  libpython3.11-minimal libpython3.11-stdlib python3.11-minimal ca-certificates netbase)
# base-files only for /usr/lib/os-release (what scanners read to name the distribution).

mkdir -p "$state/lists/partial" "$state/cache/archives/partial" "$state/debs"
touch "$state/status"
# bookworm with its point-release and security updates: the image carries the fixes.
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
{ echo "deb [arch=$arch signed-by=$keyring] $mirror bookworm main"
  echo "deb [arch=$arch signed-by=$keyring] $mirror bookworm-updates main"
  echo "deb [arch=$arch signed-by=$keyring] $security bookworm-security main"; } > "$state/sources.list"
apt_options=(-o "APT::Architecture=$arch" -o "APT::Architectures=$arch"
  -o "Dir::State::Lists=$state/lists" -o "Dir::State::status=$state/status"
  -o "Dir::Cache=$state/cache" -o "Dir::Etc::SourceList=$state/sources.list"
  -o "Dir::Etc::SourceParts=/nonexistent" -o "APT::Sandbox::User=root")
apt-get -q "${apt_options[@]}" update >/dev/null
(cd "$state/debs" && rm -f ./*.deb && apt-get -q "${apt_options[@]}" download "${packages[@]}" base-files >/dev/null)

if [ -e "$root" ] && [ -n "$(ls -A "$root")" ]; then
  echo "assemble-rootfs.sh: $root exists and is not empty: give a new directory" >&2; exit 2
fi
mkdir -p "$root/var/lib/dpkg/status.d" "$root/etc"
for deb in "$state/debs"/*.deb; do
  package=$(dpkg-deb -f "$deb" Package)
  if [ "$package" = base-files ]; then
    dpkg-deb --fsys-tarfile "$deb" | tar -C "$root" -x ./usr/lib/os-release
    ln -s ../usr/lib/os-release "$root/etc/os-release"
  else
    dpkg-deb -x "$deb" "$root"
  fi
  # What is in the image, for SBOM generators (distroless's status.d layout).
  { dpkg-deb -f "$deb"; echo "Status: install ok installed"; } > "$root/var/lib/dpkg/status.d/$package"
done
# The CA bundle ca-certificates' postinst would make (the agent trusts the API server's
# CA from its service account, but a webhook or a proxy may need the public ones).
mkdir -p "$root/etc/ssl/certs"
find "$root/usr/share/ca-certificates" -name '*.crt' | LC_ALL=C sort | xargs cat > "$root/etc/ssl/certs/ca-certificates.crt"
rm -rf "$root/usr/share/ca-certificates" "$root/usr/sbin" "$root/etc/ca-certificates.conf"
# Where OpenSSL looks by default (Debian's openssl package makes these links).
mkdir -p "$root/usr/lib/ssl"
ln -s /etc/ssl/certs "$root/usr/lib/ssl/certs"
ln -s /etc/ssl/certs/ca-certificates.crt "$root/usr/lib/ssl/cert.pem"
ln -s python3.11 "$root/usr/bin/python3"
# What no process of the agent's reads; each package's copyright file stays.
find "$root/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root"/usr/share/{man,lintian,binfmts} "$root/usr/lib/$machine-linux-gnu/gconv" \
  "$root"/usr/lib/python3.11/{test,unittest,pydoc_data,sqlite3,curses,dbm,distutils,idlelib,tkinter,lib2to3,ensurepip,turtledemo}
# Extension modules whose libraries are not here (sqlite, dbm, curses, readline,
# NIS, crypt) and CPython's own test modules.
rm -f "$root"/usr/lib/python3.11/lib-dynload/{_sqlite3,_dbm,_gdbm,_curses,_curses_panel,readline,nis,_crypt,_test,_ctypes_test,xxlimited,xxlimited_35,_xxtestfuzz,xxsubtype}*.so

site=$root/opt/node-ping-exporter/lib/python3.11/site-packages
mkdir -p "$site"
"$python" -m pip install -q --disable-pip-version-check --no-compile --only-binary=:all: \
  --platform "manylinux2014_$machine" --platform "manylinux_2_28_$machine" \
  --python-version 3.11 --implementation cp --abi cp311 --target "$site" -r "$here/requirements.txt"
"$python" -m pip install -q --disable-pip-version-check --no-compile --no-deps --upgrade --target "$site" "$here"
# The kubernetes client's asyncio half and what only it needs (aiohttp and friends),
# never imported by the agent; timezone data and pkg_resources, never read.
rm -rf "$site"/kubernetes/{aio,test} "$site"/{aiohttp,aiohttp_retry,aiosignal,aiohappyeyeballs,attr,attrs,frozenlist,multidict,propcache,yarl,tzdata,pkg_resources,bin} \
  "$site"/{aiohttp,aiohttp_retry,aiosignal,aiohappyeyeballs,attrs,frozenlist,multidict,propcache,yarl,tzdata}-*.dist-info
find "$site" \( -name tests -o -name __pycache__ \) -type d -prune -exec rm -rf {} +
find "$site" -name '*_test.py' -delete
strip_tool=strip
[ "$arch" = arm64 ] && strip_tool=aarch64-linux-gnu-strip  # binutils-aarch64-linux-gnu
find "$site" "$root/usr/lib" -name '*.so*' -type f -exec "$strip_tool" --strip-unneeded {} +

# The launcher: Debian's interpreter, isolated from the environment (-I), with the
# agent's packages first on the path, no bytecode written (the root is read-only),
# unbuffered output. No shell is needed to start it.
mkdir -p "$root/opt/node-ping-exporter/bin"
cat > "$root/opt/node-ping-exporter/bin/node-ping-exporter" <<'EOF'
#!/usr/bin/python3.11 -IBu
import sys

sys.path.insert(0, "/opt/node-ping-exporter/lib/python3.11/site-packages")
from exporter.cli import main

sys.exit(main())
EOF
chmod 0755 "$root/opt/node-ping-exporter/bin/node-ping-exporter"
mkdir -p "$root/etc" "$root/tmp" "$root/proc" "$root/sys" "$root/dev" && chmod 1777 "$root/tmp"
printf 'root:x:0:0:root:/root:/nonexistent\nnobody:x:65534:65534:nobody:/nonexistent:/nonexistent\n' \
  > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
du -sh "$root" | cut -f1
