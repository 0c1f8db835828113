#!/usr/bin/env bash
# Lets this amd64 machine run arm64 programs (the arm64 image's checks) through
# Debian's qemu-user-static, without systemd or binfmt-support: mounts binfmt_misc
# and registers qemu-aarch64 with the F flag (the kernel opens the interpreter
# now, so it also works inside a chroot that has no qemu). Idempotent. Needs root.
set -euo pipefail
qemu=/usr/bin/qemu-aarch64-static
[ -x "$qemu" ] || { echo "binfmt-arm64: $qemu is missing (apt-get install qemu-user-static)" >&2; exit 1; }
misc=/proc/sys/fs/binfmt_misc
mountpoint -q "$misc" || mount -t binfmt_misc binfmt_misc "$misc"
if [ -e "$misc/qemu-aarch64" ] && ! grep -q '^flags: .*F' "$misc/qemu-aarch64"; then
  echo -1 > "$misc/qemu-aarch64"  # registered without F (by binfmt-support): again with it
fi
if [ ! -e "$misc/qemu-aarch64" ]; then
  # ELF64, little-endian, e_machine 0xb7 (AArch64): the magic and mask of QEMU's own
  # scripts/qemu-binfmt-conf.sh.
  magic='\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
  mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
  printf '%s' ":qemu-aarch64:M::$magic:$mask:$qemu:F" > "$misc/register"
fi
grep -q '^enabled' "$misc/qemu-aarch64" || { echo "binfmt-arm64: qemu-aarch64 is not enabled" >&2; exit 1; }
