"""The STAMP Session-Sender: one test packet to every peer's reflector per probe slot.

It has no schedule of its own: the prober (exporter.engine) calls :meth:`send`
right after each echo request, so STAMP follows the same pacing, the same
stretch under load and the same skips after a stall, and costs no extra
wake-ups. The prober's tick also calls :meth:`drain` and :meth:`expire`.

Each peer is one session (this process's UDP port and SSID towards the peer's
reflector), numbered from 0. A reply carries the reflector's own sequence
number (stateful mode), from which exporter.stats.StampStats counts what reached
the reflector; the round trip is the kernel's receive stamp minus the send
stamp, less the time the reflector held the packet (its two timestamps, one
clock, so no synchronisation is needed).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client.core import Metric

from .metric_table import STAMP_SEND_ERRORS
from .peers import Peer
from .stamp import (
    ANCILLARY_SPACE,
    MAX_PACKET,
    ntp_difference_ns,
    ntp_timestamp,
    open_udp_socket,
    pack_sender,
    received_at,
    unpack_reflector,
)

# (peer address, sender sequence) -> peer, send stamp (ns), NTP timestamp sent, deadline
Pending = dict[tuple[str, int], tuple[Peer, int, int, float]]


class DatagramSocket(Protocol):
    """What the sender uses of a UDP socket (tests/scripted.py has a scripted one)."""

    def sendto(self, data: bytes, address: tuple[Any, ...], /) -> int: ...

    def recvmsg(
        self, bufsize: int, ancbufsize: int, /
    ) -> tuple[bytes, list[tuple[int, int, bytes]], int, Any]: ...

    def close(self) -> None: ...


def open_sender_socket(family: int) -> socket.socket:
    return open_udp_socket(family, 0)


class StampSender:
    def __init__(
        self,
        sockets: Mapping[int, DatagramSocket],
        port: int,
        timeout: float,
        node_name: str,
        ssid: int | None = None,
    ) -> None:
        self.sockets = sockets
        self.port = port
        self.timeout = timeout
        self.node_name = node_name
        # RFC 8972 §3: non-zero. Random per process, so a restarted agent is a new session.
        self.ssid = ssid if ssid is not None else int.from_bytes(os.urandom(2), "big") or 1
        self.pending: Pending = {}
        self._in_flight: deque[tuple[str, int]] = deque()  # send order = deadline order
        self.send_errors: dict[str, int] = {}

    def send(self, peer: Peer, now: float, time_ns: int) -> None:
        """One test packet to ``peer``'s reflector (``now``: monotonic, for the deadline)."""
        stamp = peer.stamp
        if stamp is None:
            return
        key = peer.key
        sock = self.sockets.get(key.family)
        if sock is None:  # no IPv6 UDP on this node (said at start): nothing measured
            return
        sequence = stamp.next_sequence()
        timestamp = ntp_timestamp(time_ns)
        try:
            sock.sendto(pack_sender(sequence, timestamp, self.ssid), (key.address, self.port))
        except OSError as exc:
            self._count_error(errno.errorcode.get(exc.errno or 0, "unknown"))
            stamp.record_loss()
            return
        pending_key = (key.address, sequence)
        self.pending[pending_key] = (peer, time_ns, timestamp, now + self.timeout)
        self._in_flight.append(pending_key)

    def drain(self, families: Iterable[int]) -> None:
        """Take the replies waiting on the sockets of ``families`` (those with peers)."""
        for family in families:
            sock = self.sockets.get(family)
            if sock is not None:
                self._receive(sock)

    def expire(self, now: float) -> None:
        """Count as lost every packet whose deadline has passed without a reply."""
        in_flight, pending = self._in_flight, self.pending
        while in_flight:
            entry = pending.get(in_flight[0])
            if entry is not None and entry[3] > now:
                return
            key = in_flight.popleft()
            if entry is not None:
                del pending[key]
                _resolve_lost(entry[0])

    def next_deadline(self) -> float:
        """The oldest unanswered packet's deadline (inf with none): when the prober must
        wake for expire(). Answered ones at the front are forgotten on the way."""
        in_flight, pending = self._in_flight, self.pending
        while in_flight:
            entry = pending.get(in_flight[0])
            if entry is not None:
                return entry[3]
            in_flight.popleft()
        return float("inf")

    def collect(self) -> Iterator[Metric]:
        errors = sorted(dict(self.send_errors).items())
        yield STAMP_SEND_ERRORS.samples(((self.node_name, reason), n) for reason, n in errors)

    def close(self) -> None:
        for sock in self.sockets.values():
            with contextlib.suppress(OSError):
                sock.close()

    def _count_error(self, reason: str) -> None:
        self.send_errors[reason] = self.send_errors.get(reason, 0) + 1

    def _receive(self, sock: DatagramSocket, limit: int = 4096) -> None:
        pending, port, ssid = self.pending, self.port, self.ssid
        timeout_ns = int(self.timeout * 1e9)
        for _ in range(limit):
            try:
                data, ancdata, _flags, address = sock.recvmsg(MAX_PACKET, ANCILLARY_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error reported on the socket: not a reply
                continue
            reply = unpack_reflector(data)
            if reply is None or address[1] != port or reply.ssid != ssid:
                continue
            entry = pending.get((address[0], reply.sender_sequence))
            if entry is None or entry[2] != reply.sender_timestamp:
                continue  # late (already expired), duplicate, or not ours
            del pending[(address[0], reply.sender_sequence)]
            peer, sent_ns = entry[0], entry[1]
            round_trip_ns = received_at(ancdata).stamp_ns - sent_ns
            if round_trip_ns > timeout_ns:  # after its deadline, before expire() ran
                _resolve_lost(peer)
                continue
            held_ns = ntp_difference_ns(reply.timestamp, reply.receive_timestamp)
            rtt_ns = round_trip_ns - min(max(held_ns, 0), max(round_trip_ns, 0))
            if peer.stamp is not None:
                peer.stamp.record_reply(reply.sender_sequence, reply.sequence, rtt_ns / 1e6)


def _resolve_lost(peer: Peer) -> None:
    if peer.stamp is not None:
        peer.stamp.record_loss()
