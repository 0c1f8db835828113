"""STAMP (RFC 8762 §4.2 and §4.3, unauthenticated mode, with RFC 8972's Session-Sender
Identifier and TLV flags): the test packets byte for byte, and the UDP sockets both
ends use (kernel receive stamps; for the reflector the received TTL and the address a
packet was sent to, so that the reply leaves from that address: on a node with
several addresses the route back would otherwise pick another, and the sender
would not recognise the reply).

Both packets are 44 octets without TLVs, the same size each way, so that a loss
difference between the directions is never a size difference. Timestamps are
NTP format (RFC 5905: seconds since 1900 and a 32-bit fraction), the Z bit of
the error estimate says so, and the S bit says the clocks are *not* known to be
synchronised: the agent measures round trips, never one-way delay.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from typing import Any, NamedTuple

from . import kernelstamps

# Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01).
NTP_UNIX_OFFSET = 2_208_988_800
BASE_SIZE = 44
# Session-Sender packet: sequence, timestamp, error estimate, SSID, 28 octets MBZ.
SENDER = struct.Struct("!IQHH28x")
# Session-Reflector packet: sequence, timestamp, error estimate, SSID, receive timestamp,
# sender's sequence, timestamp and error estimate, MBZ (2), sender's TTL, MBZ (3).
REFLECTOR = struct.Struct("!IQHHQIQH2xB3x")
assert SENDER.size == REFLECTOR.size == BASE_SIZE

# Error estimate (RFC 4656 §4.1.2): S | Z | Scale (6 bits) | Multiplier (8 bits), meaning
# Multiplier * 2^(Scale - 32) seconds. Not synchronised, NTP format, 2^-10 s (about 1 ms):
# the kernel stamps are far finer, but nothing here knows how far the clock is off.
ERROR_SYNCHRONISED = 0x8000
ERROR_PTP_FORMAT = 0x4000
ERROR_ESTIMATE = (22 << 8) | 1

# RFC 8972 §4: TLV header (flags, type, length) and the flags a reflector sets.
TLV_HEADER = struct.Struct("!BBH")
TLV_UNRECOGNIZED = 0x80
TLV_MALFORMED = 0x40


def ntp_timestamp(unix_ns: int) -> int:
    """A Unix time in ns as a 64-bit NTP timestamp (wraps in 2036 like NTP's era 0)."""
    seconds, ns = divmod(unix_ns, 1_000_000_000)
    fraction = (ns << 32) // 1_000_000_000
    return (((seconds + NTP_UNIX_OFFSET) & 0xFFFFFFFF) << 32) | fraction


def ntp_to_ns(timestamp: int) -> int:
    """A 64-bit NTP timestamp as ns since its era's start; differences of two are exact
    to a nanosecond or so, which is all the round-trip arithmetic needs."""
    return (timestamp >> 32) * 1_000_000_000 + (((timestamp & 0xFFFFFFFF) * 1_000_000_000) >> 32)


def ntp_difference_ns(later: int, earlier: int) -> int:
    """later - earlier in ns, across the 2036 wrap of the seconds field."""
    seconds = ((later >> 32) - (earlier >> 32)) & 0xFFFFFFFF
    if seconds >= 1 << 31:
        seconds -= 1 << 32
    fraction_ns = (((later & 0xFFFFFFFF) - (earlier & 0xFFFFFFFF)) * 1_000_000_000) >> 32
    return seconds * 1_000_000_000 + fraction_ns


class SenderPacket(NamedTuple):
    sequence: int
    timestamp: int
    error_estimate: int
    ssid: int
    tlvs: bytes  # everything after the 44 base octets


class ReflectorPacket(NamedTuple):
    sequence: int  # the reflector's own, per session (stateful mode)
    timestamp: int  # when the reflector sent it
    error_estimate: int
    ssid: int
    receive_timestamp: int  # when the reflector received the sender's packet
    sender_sequence: int
    sender_timestamp: int
    sender_error_estimate: int
    sender_ttl: int
    tlvs: bytes


def pack_sender(sequence: int, timestamp: int, ssid: int) -> bytes:
    return SENDER.pack(sequence & 0xFFFFFFFF, timestamp, ERROR_ESTIMATE, ssid)


def unpack_sender(data: bytes) -> SenderPacket | None:
    """The sender's packet, or None when it is shorter than a STAMP packet."""
    if len(data) < BASE_SIZE:
        return None
    sequence, timestamp, error_estimate, ssid = SENDER.unpack_from(data)
    return SenderPacket(sequence, timestamp, error_estimate, ssid, data[BASE_SIZE:])


def pack_reflector(
    sequence: int,
    timestamp: int,
    receive_timestamp: int,
    sender: SenderPacket,
    sender_ttl: int,
) -> bytes:
    """The reply to ``sender``: same length, its TLVs copied back with RFC 8972's flags."""
    head = REFLECTOR.pack(
        sequence & 0xFFFFFFFF,
        timestamp,
        ERROR_ESTIMATE,
        sender.ssid,
        receive_timestamp,
        sender.sequence,
        sender.timestamp,
        sender.error_estimate,
        sender_ttl & 0xFF,
    )
    return head + reflect_tlvs(sender.tlvs)


def unpack_reflector(data: bytes) -> ReflectorPacket | None:
    if len(data) < BASE_SIZE:
        return None
    fields = REFLECTOR.unpack_from(data)
    return ReflectorPacket._make((*fields, data[BASE_SIZE:]))


def reflect_tlvs(tlvs: bytes) -> bytes:
    """The sender's TLVs as a reflector that implements none of them returns them
    (RFC 8972 §4): each copied with the U flag set; from the first TLV whose length
    runs past the packet on, the rest is copied with the M flag on that TLV."""
    out = bytearray(tlvs)
    at = 0
    while at + TLV_HEADER.size <= len(out):
        flags, _type, length = TLV_HEADER.unpack_from(out, at)
        end = at + TLV_HEADER.size + length
        if end > len(out):
            out[at] = flags | TLV_MALFORMED
            break
        out[at] = flags | TLV_UNRECOGNIZED
        at = end
    return bytes(out)


# -- sockets ---------------------------------------------------------------------------

# Linux socket options Python 3.11 does not name.
IP_RECVTTL = 12
IP_TTL = 2  # the control message's type
IPV6_RECVHOPLIMIT = 51
IPV6_HOPLIMIT = 52
IP_PKTINFO = 8
IPV6_RECVPKTINFO, IPV6_PKTINFO = 49, 50
IN_PKTINFO = struct.Struct("@i4s4s")  # ifindex, spec_dst, addr
IN6_PKTINFO = struct.Struct("@16si")  # addr, ifindex
_INT = struct.Struct("@i")
_TTL_MESSAGES = ((socket.IPPROTO_IP, IP_TTL), (socket.IPPROTO_IPV6, IPV6_HOPLIMIT))
# Room for a receive stamp, a TTL and the packet's destination in recvmsg's ancillary data.
ANCILLARY_SPACE = (
    kernelstamps.ANCILLARY_SPACE
    + socket.CMSG_SPACE(_INT.size)
    + socket.CMSG_SPACE(IN6_PKTINFO.size)
)
MAX_PACKET = 2048
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024


def open_udp_socket(family: int, port: int, reflector: bool = False) -> socket.socket:
    """A non-blocking UDP socket on ``port`` (0: any) of every address of ``family``
    (IPv6 only for 6), with kernel receive stamps and, for a reflector, the received
    TTL and each packet's destination address."""
    if family == 6:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        address: tuple[Any, ...] = ("::", port)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        address = ("0.0.0.0", port)
    try:
        if family == 6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if reflector:
            if family == 6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        kernelstamps.enable(sock)
        with contextlib.suppress(OSError):  # capped by net.core.rmem_max
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        sock.setblocking(False)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


class Received(NamedTuple):
    """What the kernel said about a received packet."""

    stamp_ns: int  # receive stamp, CLOCK_REALTIME ns (now, when it gave none)
    ttl: int  # received TTL or hop limit (255 when it did not say)
    reply_from: list[tuple[int, int, bytes]]  # ancillary data: send the reply from there
    unicast: bool  # sent to one of this host's addresses (not broadcast or multicast)


def received_at(ancdata: list[tuple[int, int, bytes]]) -> Received:
    """recvmsg's ancillary data, read."""
    stamp, ttl, unicast = 0, 255, True
    reply_from: list[tuple[int, int, bytes]] = []
    for level, kind, value in ancdata:
        if level == socket.SOL_SOCKET:
            stamp = kernelstamps.stamp_ns(level, kind, value) or stamp
        elif (level, kind) in _TTL_MESSAGES:
            ttl = _INT.unpack_from(value)[0]
        elif level == socket.IPPROTO_IP and kind == IP_PKTINFO:
            # spec_dst is the local address the kernel would answer from; it differs
            # from the header's destination only for broadcast and multicast.
            _index, local, destination = IN_PKTINFO.unpack_from(value)
            unicast = local == destination
            reply_from = [(level, IP_PKTINFO, IN_PKTINFO.pack(0, local, bytes(4)))]
        elif level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO:
            destination, _index = IN6_PKTINFO.unpack_from(value)
            unicast = destination[0] != 0xFF  # ff00::/8 is multicast
            reply_from = [(level, IPV6_PKTINFO, IN6_PKTINFO.pack(destination, 0))]
    return Received(stamp or time.time_ns(), ttl, reply_from, unicast)
