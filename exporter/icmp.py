"""icmplib's sockets, extended for one long-lived socket per address family.

icmplib (pinned 3.0.4) creates the sockets (datagram "ping" sockets without
privileges, raw sockets with CAP_NET_RAW), owns the ICMP constants and header
layout, and builds echo requests. What it lacks for this workload is added here
and only here:

* non-blocking drain with ``recvmsg`` and the kernel's receive stamp
  (exporter/kernelstamps.py), so RTTs do not include event-loop delay;
* a send path without icmplib's per-packet ``getaddrinfo`` and TTL/TOS syscalls;
* a parser that keeps the payload: in raw mode a reply must match source
  address, ICMP id, sequence *and* a per-process payload token, because every
  raw ICMP socket on a host sees every reply (icmplib matches id+sequence only,
  and its id is the PID — 1 in every container);
* kernel-side echo-reply-only filters on raw sockets (ICMP_FILTER, ICMP6_FILTER)
  and a checksum computed in C rather than a Python loop;
* never fragmenting (DF on IPv4, IPV6_DONTFRAG) when path-MTU probes are on: such
  a probe, as large as the route allows, must cross the path whole or be lost, and
  one larger than the kernel knows the path takes fails at once with EMSGSIZE
  (the settings keep small probes under IPv6's minimum MTU then).
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import socket
import struct
import time
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from icmplib import ICMPv4Socket, ICMPv6Socket
from icmplib.exceptions import ICMPLibError, SocketPermissionError

from . import kernelstamps

SOL_RAW = 255
ICMP_FILTER = 1
ICMP6_FILTER = 1
ICMPV6_ECHO_REPLY = 129
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
# Linux socket options Python 3.11 does not name.
IP_MTU_DISCOVER, IP_PMTUDISC_DO, IP_MTU = 10, 2, 14
IPV6_MTU, IPV6_DONTFRAG = 24, 62
IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO = 23, 2
# IP and ICMP header bytes in front of an echo payload, per family.
HEADER_BYTES = {4: 20 + 8, 6: 40 + 8}
MAX_PACKET_BYTES = 65535  # IPv4 total length; IPv6 payload length plus its header
# Our payload starts with: 8-byte process token, 8-byte probe counter.
PAYLOAD_HEADER = struct.Struct("!8sQ")
_ECHO_REPLY = struct.Struct("!BBHHH8sQ")  # header + the start of our payload
MIN_PAYLOAD_SIZE = PAYLOAD_HEADER.size


class IcmpMode(StrEnum):
    AUTO = "auto"
    UNPRIVILEGED = "unprivileged"
    RAW = "raw"


class IcmpUnavailable(Exception):
    """Neither socket kind could be opened; the message names both fixes."""


# source address, sequence, payload token, probe counter, receive time in ns
# (CLOCK_REALTIME, from the kernel when it gives a stamp)
EchoReply = tuple[str, int, bytes, int, int]
RequestBuilder = Callable[[int, int], bytes]


def ping_group_range() -> tuple[int, int] | None:
    """The namespace's ``net.ipv4.ping_group_range``, or None if unreadable."""
    try:
        with open("/proc/sys/net/ipv4/ping_group_range") as f:
            low, high = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        return None
    return low, high


def fast_checksum(data: bytes) -> int:
    """RFC 1071 checksum, computed in C.

    The one's-complement sum of 16-bit words is the big-endian number modulo
    0xFFFF (2**16 = 1 mod 0xFFFF), except that a non-zero sum is 0xFFFF, not 0.
    """
    if len(data) % 2:
        data += b"\x00"
    value = int.from_bytes(data, "big")
    total = value % 0xFFFF
    if total == 0 and value:
        total = 0xFFFF
    return ~total & 0xFFFF


class _EchoMixin:
    """What both families add to icmplib's socket. Relies on icmplib's attributes."""

    # Attributes of icmplib's classes, and our `ident`.
    _sock: socket.socket
    _privileged: bool
    _IP_VERSION: int
    _ICMP_HEADER_OFFSET: int
    _ICMP_ECHO_REPLY: int
    ident: int

    _ICMP_ECHO_REQUEST: int

    if TYPE_CHECKING:  # provided by icmplib's classes, later in the MRO

        def close(self) -> None: ...

    def _prepare(self, dont_fragment: bool) -> None:
        sock = self._sock
        sock.setblocking(False)
        kernelstamps.enable(sock)
        # Capped by net.core.rmem_max; the default size still works.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        if dont_fragment and self._IP_VERSION == 6:
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_DONTFRAG, 1)
            except OSError as exc:  # qemu-user knows only the path-MTU setting
                if exc.errno != errno.ENOPROTOOPT:
                    raise
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO)
        elif dont_fragment:
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        # Raw sockets pick an id nobody else on the host is likely to use;
        # datagram sockets get theirs from the kernel, which also filters on it.
        self.ident = random.getrandbits(16) if self._privileged else 0
        if self._privileged:
            self._install_reply_filter()

    def _install_reply_filter(self) -> None:
        raise NotImplementedError

    def sockaddr(self, address: str) -> tuple[Any, ...]:
        raise NotImplementedError

    def request_builder(self, token: bytes, payload_size: int) -> RequestBuilder:
        """A function (sequence, counter) -> echo request, for the hot send path.

        Same packet as ``_create_packet(ident, sequence, token + counter + zeros)``,
        in one ``struct.pack``.
        """
        layout = struct.Struct(f"!BBHHH8sQ{payload_size - PAYLOAD_HEADER.size}x")
        echo, ident, pack = self._ICMP_ECHO_REQUEST, self.ident, layout.pack
        if not self._privileged:
            return lambda sequence, counter: pack(echo, 0, 0, 0, sequence, token, counter)

        def build(sequence: int, counter: int) -> bytes:
            checksum = fast_checksum(pack(echo, 0, 0, ident, sequence, token, counter))
            return pack(echo, 0, checksum, ident, sequence, token, counter)

        return build

    @property
    def sendto(self) -> Callable[[bytes, tuple[Any, ...]], int]:
        return self._sock.sendto

    def drain(self, limit: int = 4096) -> list[EchoReply]:
        """Every echo reply waiting in the socket (up to ``limit``), without blocking.

        Replies come as plain tuples (source, sequence, token, counter,
        received_ns); anything else (other ICMP types, another raw socket's
        id, runts) is skipped.
        """
        replies: list[EchoReply] = []
        append = replies.append
        recvmsg = self._sock.recvmsg
        header_at = self._ICMP_HEADER_OFFSET if self._privileged else 0
        size = header_at + _ECHO_REPLY.size
        unpack = _ECHO_REPLY.unpack_from
        kernel_stamp = kernelstamps.stamp_ns
        echo_reply = self._ICMP_ECHO_REPLY
        ident = self.ident if self._privileged else -1
        for _ in range(limit):
            try:
                data, ancdata, _flags, addr = recvmsg(2048, kernelstamps.ANCILLARY_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            if len(data) < size:
                continue
            icmp_type, _code, _sum, reply_id, sequence, token, counter = unpack(data, header_at)
            if icmp_type != echo_reply or (ident >= 0 and reply_id != ident):
                continue
            stamp = kernel_stamp(*ancdata[0]) if ancdata else 0
            if not stamp:
                stamp = time.time_ns()
            append((addr[0], sequence, token, counter, stamp))
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


def open_echo_socket(family: int, raw: bool, dont_fragment: bool = False) -> EchoSocket:
    """One prepared socket; raises icmplib's errors (permission, address) or OSError.
    ``dont_fragment``: every packet sent whole or not at all (path-MTU probes)."""
    sock = _CLASSES[family](privileged=raw)
    sock._prepare(dont_fragment)
    return sock


def route_mtu(address: str, family: int) -> int | None:
    """The MTU of the route to ``address`` now (the interface's, or the route's own
    `mtu`, or a smaller path MTU the kernel has learnt): the largest packet this node
    would send there whole. None when there is no route. Sends nothing."""
    kind = socket.AF_INET6 if family == 6 else socket.AF_INET
    level, option = (socket.IPPROTO_IPV6, IPV6_MTU) if family == 6 else (socket.IPPROTO_IP, IP_MTU)
    try:
        with socket.socket(kind, socket.SOCK_DGRAM) as sock:
            sock.connect((address, 9))
            return int(sock.getsockopt(level, option))
    except OSError:
        return None


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
