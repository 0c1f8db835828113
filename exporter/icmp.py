"""icmplib's sockets, extended for one long-lived socket per address family.

icmplib (pinned 3.0.4) creates the sockets (datagram "ping" sockets without
privileges, raw sockets with CAP_NET_RAW), owns the ICMP constants and header
layout, and builds echo requests. What it lacks for this workload is added here
and only here:

* non-blocking drain with ``recvmsg`` and the kernel's receive timestamp
  (SO_TIMESTAMPNS), so RTTs do not include event-loop delay;
* a send path without icmplib's per-packet ``getaddrinfo`` and TTL/TOS syscalls;
* a parser that keeps the payload: in raw mode a reply must match source
  address, ICMP id, sequence *and* a per-process payload token, because every
  raw ICMP socket on a host sees every reply (icmplib matches id+sequence only,
  and its id is the PID — 1 in every container);
* kernel-side echo-reply-only filters on raw sockets (ICMP_FILTER, ICMP6_FILTER)
  and a checksum computed in C rather than a Python loop.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import socket
import struct
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from icmplib import ICMPv4Socket, ICMPv6Socket
from icmplib.exceptions import ICMPLibError, SocketPermissionError

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux value, asm-generic
SOL_RAW = 255
ICMP_FILTER = 1
ICMP6_FILTER = 1
ICMPV6_ECHO_REPLY = 129
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)
# Our payload starts with: 8-byte process token, 8-byte probe counter.
PAYLOAD_HEADER = struct.Struct("!8sQ")
MIN_PAYLOAD_SIZE = PAYLOAD_HEADER.size


class IcmpMode(StrEnum):
    AUTO = "auto"
    UNPRIVILEGED = "unprivileged"
    RAW = "raw"


class IcmpUnavailable(Exception):
    """Neither socket kind could be opened; the message names both fixes."""


@dataclass(frozen=True, slots=True)
class EchoReply:
    source: str
    ident: int
    sequence: int
    token: bytes
    counter: int
    received_ns: int  # CLOCK_REALTIME, from the kernel when it gives a stamp


def ping_group_range() -> tuple[int, int] | None:
    """The namespace's ``net.ipv4.ping_group_range``, or None if unreadable."""
    try:
        with open("/proc/sys/net/ipv4/ping_group_range") as f:
            low, high = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        return None
    return low, high


def ping_group_admits_me() -> bool:
    span = ping_group_range()
    if span is None:
        return False
    groups = {os.getgid(), *os.getgroups()}
    return any(span[0] <= g <= span[1] for g in groups)


def fast_checksum(data: bytes) -> int:
    """RFC 1071 checksum, the 16-bit word sum done by struct in C."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


class _EchoMixin:
    """What both families add to icmplib's socket. Relies on icmplib's attributes."""

    # Attributes of icmplib's classes, and our `ident`.
    _sock: socket.socket
    _privileged: bool
    _IP_VERSION: int
    _ICMP_HEADER_OFFSET: int
    _ICMP_ECHO_REPLY: int
    ident: int

    if TYPE_CHECKING:  # provided by icmplib's classes, later in the MRO

        def _create_packet(self, id: int, sequence: int, payload: bytes) -> bytes: ...
        def close(self) -> None: ...

    def _checksum(self, data: bytes) -> int:  # overrides icmplib's Python loop
        return fast_checksum(data)

    def _prepare(self) -> None:
        sock = self._sock
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        # Capped by net.core.rmem_max; the default size still works.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        # Raw sockets pick an id nobody else on the host is likely to use;
        # datagram sockets get theirs from the kernel, which also filters on it.
        self.ident = random.getrandbits(16) if self._privileged else 0
        if self._privileged:
            self._install_reply_filter()

    def _install_reply_filter(self) -> None:
        raise NotImplementedError

    @property
    def raw(self) -> bool:
        return self._privileged

    def fileno(self) -> int:
        return self._sock.fileno()

    def sockaddr(self, address: str) -> tuple[Any, ...]:
        raise NotImplementedError

    def build_request(self, sequence: int, payload: bytes) -> bytes:
        return self._create_packet(self.ident, sequence, payload)

    def send_packet(self, packet: bytes, sockaddr: tuple[Any, ...]) -> None:
        self._sock.sendto(packet, sockaddr)

    def drain(self, limit: int = 4096) -> list[EchoReply]:
        """Every echo reply waiting in the socket (up to ``limit``), without blocking."""
        replies: list[EchoReply] = []
        sock = self._sock
        payload_at = (self._ICMP_HEADER_OFFSET if self._privileged else 0) + 8
        unpack_header = struct.Struct("!BBHHH").unpack_from
        unpack_payload = PAYLOAD_HEADER.unpack_from
        echo_reply = self._ICMP_ECHO_REPLY
        for _ in range(limit):
            try:
                data, ancdata, _flags, addr = sock.recvmsg(2048, _ANCILLARY_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            if len(data) < payload_at + PAYLOAD_HEADER.size:
                continue
            icmp_type, _code, _sum, ident, sequence = unpack_header(data, payload_at - 8)
            if icmp_type != echo_reply or (self._privileged and ident != self.ident):
                continue
            token, counter = unpack_payload(data, payload_at)
            stamp = 0
            for level, kind, value in ancdata:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = _TIMESPEC.unpack_from(value)
                    stamp = sec * 1_000_000_000 + nsec
            replies.append(
                EchoReply(addr[0], ident, sequence, token, counter, stamp or time.time_ns())
            )
        return replies


class EchoSocketV4(_EchoMixin, ICMPv4Socket):  # type: ignore[misc]
    def _install_reply_filter(self) -> None:
        # ICMP_FILTER: a set bit drops that type. Pass echo replies (type 0) only.
        self._sock.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("I", 0xFFFFFFFF & ~1))

    def sockaddr(self, address: str) -> tuple[Any, ...]:
        return (address, 0)


class EchoSocketV6(_EchoMixin, ICMPv6Socket):  # type: ignore[misc]
    def _install_reply_filter(self) -> None:
        # struct icmp6_filter: 256 bits, a set bit blocks that type.
        words = [0xFFFFFFFF] * 8
        words[ICMPV6_ECHO_REPLY >> 5] &= ~(1 << (ICMPV6_ECHO_REPLY & 31)) & 0xFFFFFFFF
        self._sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("8I", *words))

    def sockaddr(self, address: str) -> tuple[Any, ...]:
        return (address, 0, 0, 0)


EchoSocket = EchoSocketV4 | EchoSocketV6
_CLASSES: dict[int, type[EchoSocketV4] | type[EchoSocketV6]] = {
    4: EchoSocketV4,
    6: EchoSocketV6,
}


def open_echo_socket(family: int, raw: bool) -> EchoSocket:
    """One prepared socket; raises icmplib's errors (permission, address) or OSError."""
    sock = _CLASSES[family](privileged=raw)
    sock._prepare()
    return sock


def resolve_mode(requested: IcmpMode) -> IcmpMode:
    """The socket kind this process can use: probes by opening an IPv4 socket."""
    candidates = (
        [IcmpMode.UNPRIVILEGED, IcmpMode.RAW] if requested is IcmpMode.AUTO else [requested]
    )
    for mode in candidates:
        try:
            open_echo_socket(4, raw=mode is IcmpMode.RAW).close()
            return mode
        except (SocketPermissionError, PermissionError):
            continue
        except (ICMPLibError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno == errno.EAFNOSUPPORT:
                continue
            raise
    span = ping_group_range()
    span_text = f"{span[0]} {span[1]}" if span else "unreadable"
    raise IcmpUnavailable(
        f"cannot open an ICMP socket (icmp-mode {requested.value}): either let this "
        f"process's group use unprivileged ping sockets (sysctl net.ipv4.ping_group_range, "
        f"now '{span_text}', must include gid {os.getgid()}), or grant CAP_NET_RAW for raw "
        f"sockets (--icmp-mode raw)"
    )
