"""Kernel receive stamps: when a packet arrived, from recvmsg's ancillary data, so
that RTTs do not include event-loop delay.

Nanosecond stamps (SO_TIMESTAMPNS) where the kernel gives them; microsecond ones
(SO_TIMESTAMP) where only those can be had — qemu-user, which runs the arm64 image on
an amd64 host, translates SO_TIMESTAMP but refuses SO_TIMESTAMPNS (ENOPROTOOPT);
without either, the caller reads the clock when it drains the socket.
"""

from __future__ import annotations

import errno
import socket
import struct

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux values, asm-generic
SO_TIMESTAMP = getattr(socket, "SO_TIMESTAMP", 29)
# struct timespec and struct timeval: two 64-bit fields on 64-bit Linux.
STAMP = struct.Struct("@qq")
ANCILLARY_SPACE = socket.CMSG_SPACE(STAMP.size)


def enable(sock: socket.socket) -> None:
    """Ask the kernel to stamp what ``sock`` receives, as finely as it will."""
    for option in (SO_TIMESTAMPNS, SO_TIMESTAMP):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, 1)
            return
        except OSError as exc:
            if exc.errno != errno.ENOPROTOOPT:
                raise


def stamp_ns(level: int, kind: int, data: bytes) -> int:
    """The receive stamp in one control message, ns since the epoch (CLOCK_REALTIME);
    0 when the message is not a stamp."""
    if level != socket.SOL_SOCKET:
        return 0
    if kind == SO_TIMESTAMPNS:
        seconds, nanoseconds = STAMP.unpack_from(data)
        return int(seconds * 1_000_000_000 + nanoseconds)
    if kind == SO_TIMESTAMP:
        seconds, microseconds = STAMP.unpack_from(data)
        return int(seconds * 1_000_000_000 + microseconds * 1000)
    return 0
