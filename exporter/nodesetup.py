"""``node-ping-exporter setup …``: the two node preparations the chart's init
containers make, in the agent itself, because the image has no shell.

- ``setup ping-group-range``: lets every group open unprivileged ICMP sockets on
  this node (the host sysctl ``net.ipv4.ping_group_range``, written by a
  privileged init container when ``icmp.setPingGroupRange`` is on);
- ``setup textfile-dir --group GID DIR``: hands the node-exporter textfile
  directory to the agent's group, group-writable, without following a link.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import sys

from .logs import one_line

PROG = "node-ping-exporter setup"
PING_GROUP_RANGE = "/proc/sys/net/ipv4/ping_group_range"
ALL_GROUPS = "0 2147483647"
MAX_GID = 4294967294  # (gid_t)-1 means "leave unchanged"


class SetupError(Exception):
    """A preparation that cannot be made: one line for the init container's log."""


def set_ping_group_range(path: str = PING_GROUP_RANGE) -> str:
    try:
        with open(path, "w") as sysctl:
            sysctl.write(ALL_GROUPS + "\n")
    except OSError as exc:
        why = "the init container must be privileged" if exc.errno in (errno.EACCES, errno.EPERM,
              errno.EROFS) else "is this a Linux node with IPv4?"  # fmt: skip
        raise SetupError(f"{path}: {exc.strerror} ({why})") from exc
    return f"{path} = {ALL_GROUPS}"


def share_textfile_dir(path: str, group: int) -> str:
    """chgrp + chmod 0775 on the directory itself: if the path's last component is a
    link, or anything but a directory, it is refused, never followed. (In the pod the
    path is the mount point the chart chose; the host path behind it is checked by
    the chart's schema.)"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise SetupError(f"{path}: not a directory that can be opened ({exc.strerror})") from exc
    try:
        os.fchown(fd, -1, group)
        os.fchmod(fd, 0o775)
        mode = stat.filemode(os.fstat(fd).st_mode)
    except OSError as exc:
        raise SetupError(f"{path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    return f"{path}: group {group}, {mode}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    tasks = parser.add_subparsers(dest="task", required=True)
    tasks.add_parser("ping-group-range", help="allow unprivileged ICMP sockets for every group")
    textfile = tasks.add_parser("textfile-dir", help="hand the textfile directory to a group")
    textfile.add_argument("--group", type=int, required=True, help="numeric group id")
    textfile.add_argument("directory")
    args = parser.parse_args(argv)
    try:
        if args.task == "ping-group-range":
            print(set_ping_group_range())
        else:
            if not 0 <= args.group <= MAX_GID:
                parser.error(f"--group {args.group}: a group id is 0 to {MAX_GID}")
            print(share_textfile_dir(args.directory, args.group))
    except SetupError as exc:
        print(f"{PROG}: {one_line(str(exc))}", file=sys.stderr)
        return 1
    return 0
