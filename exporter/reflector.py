"""The STAMP Session-Reflector (RFC 8762 §4.3, stateful, unauthenticated) every agent runs.

Stateful means the reflector numbers its replies itself, per session, from 0:
a sender that sees reflector sequence 7 on its 10th packet knows 8 packets
reached the reflector, so it can split its loss into the forward and the reverse
direction (exporter.stamp_sender). A session is a sender's address, port and
Session-Sender Identifier (RFC 8972 §3); one idle for SESSION_IDLE_SECONDS is
forgotten, and at most MAX_SESSIONS are kept (the oldest goes first).

The reply goes out as soon as the packet is read (the socket wakes the event
loop; no tick), and carries the kernel's receive stamp and the send time, so
the sender subtracts the reflector's own delay from the round trip. When
packets come faster than one per ``pause`` (a quarter of the probe timeout, at
most 0.25 s: a cluster of more than a few nodes), the reflector stops listening
and reads every ``pause`` instead, answering what waited in one go, until a read
finds nothing: 1/pause wake-ups a second however many peers send, at the cost of
a hold the sender subtracts. The pause is shortened while a read finds the
socket's buffer a quarter full (a node's default buffer holds some 200 packets:
5000 peers need a read every 10 ms), so polling never drops what waiting for
each packet would have answered.

Only addresses of known nodes get a reply, by default: a UDP reflector that
answers anyone on a host network is a tool for others (a spoofed source turns
it against a third party). Replies are never larger than requests; nothing from
the reflector port itself is answered (a spoofed packet between two reflectors
would otherwise bounce between them for ever), nor a packet sent to a broadcast
or multicast address; and at most MAX_REPLIES_PER_SECOND replies go out (a
flood must not take the event loop from the prober), the rest counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import Metric

from .metric_table import STAMP_REFLECTOR_PACKETS
from .stamp import (
    ANCILLARY_SPACE,
    MAX_PACKET,
    ntp_timestamp,
    open_udp_socket,
    pack_reflector,
    received_at,
    unpack_sender,
)

log = logging.getLogger(__name__)

SESSION_IDLE_SECONDS = 300.0
MAX_SESSIONS = 16_384
READ_BATCH = 256
# Every node's sender at 1 probe/s in a 5000-node cluster is 5000/s; four times that.
MAX_REPLIES_PER_SECOND = 20_000
MAX_PAUSE_SECONDS = 0.25
MIN_POLL_SECONDS = 0.01

SessionKey = tuple[str, int, int]  # sender address, port, SSID


def open_reflector_socket(family: int, port: int) -> socket.socket:
    return open_udp_socket(family, port, reflector=True)


class Reflector:
    """Answers STAMP test packets; a component (started, supervised, stopped, metrics)."""

    name = "stamp-reflector"

    def __init__(
        self,
        sockets: dict[int, socket.socket],
        node_name: str,
        allowed: Callable[[str], bool] | None = None,
        port: int = 0,
        peers_known: asyncio.Event | None = None,
        time_ns: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], float] = time.monotonic,
        pause: float = 0.0,
    ) -> None:
        self.sockets = sockets
        self.pause = pause  # 0: every packet answered as it comes
        self.node_name = node_name
        self.allowed = allowed  # None: every source
        # Nothing is read before this is set (the first discovery sync): until then
        # every source is unknown, and a packet waiting in the socket's buffer is
        # answered late where it would have been refused (a restarted agent's
        # peers saw UDP loss).
        self.peers_known = peers_known
        self.port = port  # the reflector's own: packets from it are never answered
        self._second = 0  # the monotonic second being counted, and replies in it
        self._replies_this_second = 0
        self.time_ns = time_ns
        self.monotonic = monotonic
        # session -> (next reflector sequence, last seen); oldest first
        self.sessions: OrderedDict[SessionKey, tuple[int, float]] = OrderedDict()
        self.counts = dict.fromkeys(
            ("reflected", "unknown_source", "malformed", "not_unicast", "rate_limited",
             "send_error"),
            0,
        )  # fmt: skip

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        if self.peers_known is not None:
            await self.peers_known.wait()
        woken: dict[int, float] = {}  # socket -> when a packet last woke the loop
        polls: dict[int, tuple[asyncio.TimerHandle, float]] = {}  # -> next poll, its pause
        holds = {  # packets a socket's receive buffer holds, roughly
            sock.fileno(): max(16, sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2048)
            for sock in self.sockets.values()
        }

        def wake(sock: socket.socket) -> None:
            """A packet arrived; a second within ``pause``: poll instead of listening."""
            self.read(sock)
            now, fd = self.monotonic(), sock.fileno()
            since = now - woken.get(fd, -self.pause)
            woken[fd] = now
            if self.pause and since < self.pause:
                # A quarter of the buffer per poll at the rate seen, so none is dropped.
                loop.remove_reader(fd)
                schedule(sock, min(self.pause, max(MIN_POLL_SECONDS, holds[fd] / 4 * since)))

        def schedule(sock: socket.socket, pause: float) -> None:
            polls[sock.fileno()] = (loop.call_later(pause, poll, sock), pause)

        def poll(sock: socket.socket) -> None:
            """Busy: read every pause while packets keep coming (shorter while a read
            finds the buffer filling, longer up to ``pause`` while it finds little),
            then listen again."""
            fd = sock.fileno()
            pause = polls.pop(fd)[1]
            count = 0
            try:
                count = self.read(sock, holds[fd] + READ_BATCH)
            finally:  # even after a bug in read(): never left neither listening nor polling
                if not count:
                    loop.add_reader(fd, wake, sock)
                elif count > holds[fd] // 4:
                    schedule(sock, max(MIN_POLL_SECONDS, pause / 2))
                elif count < holds[fd] // 16:
                    schedule(sock, min(self.pause, pause * 2))
                else:
                    schedule(sock, pause)

        for sock in self.sockets.values():
            loop.add_reader(sock.fileno(), wake, sock)
        try:
            await asyncio.Event().wait()  # the work happens in read()
        finally:
            for handle, _ in polls.values():
                handle.cancel()
            for sock in self.sockets.values():
                loop.remove_reader(sock.fileno())

    def collect(self) -> Iterator[Metric]:
        counts = sorted(dict(self.counts).items())
        yield STAMP_REFLECTOR_PACKETS.samples(((self.node_name, r), n) for r, n in counts)

    def read(self, sock: socket.socket, limit: int = READ_BATCH) -> int:
        """Reflect everything waiting in ``sock`` (up to ``limit`` packets: a poll takes
        what a whole pause brought); how many packets there were."""
        count = 0
        for count in range(limit):
            try:
                data, ancdata, _flags, address = sock.recvmsg(MAX_PACKET, ANCILLARY_SPACE)
            except (BlockingIOError, InterruptedError):
                return count
            except OSError as exc:  # an ICMP error queued on the socket: nothing to read
                log.debug("reflector receive error", extra={"problem": str(exc)})
                continue
            self.reflect(sock, data, ancdata, address)
        return limit

    def reflect(
        self,
        sock: socket.socket,
        data: bytes,
        ancdata: list[tuple[int, int, bytes]],
        address: tuple[Any, ...],
    ) -> None:
        source = address[0]
        if (self.allowed is not None and not self.allowed(source)) or address[1] == self.port:
            self.counts["unknown_source"] += 1
            return
        packet = unpack_sender(data)
        if packet is None:
            self.counts["malformed"] += 1
            return
        received = received_at(ancdata)
        if not received.unicast:
            self.counts["not_unicast"] += 1
            return
        second = int(self.monotonic())
        if second != self._second:
            self._second, self._replies_this_second = second, 0
        if self._replies_this_second >= MAX_REPLIES_PER_SECOND:
            self.counts["rate_limited"] += 1
            return
        self._replies_this_second += 1
        sequence = self._next_sequence((source, address[1], packet.ssid))
        receive_stamp = ntp_timestamp(received.stamp_ns)
        reply = pack_reflector(
            sequence, ntp_timestamp(self.time_ns()), receive_stamp, packet, received.ttl
        )
        try:  # from the address the packet was sent to
            sock.sendmsg([reply], received.reply_from, 0, address)
        except OSError as exc:
            self.counts["send_error"] += 1
            if exc.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.EPERM, errno.ENETUNREACH):
                log.debug("reflector send error", extra={"problem": str(exc)})
            return
        self.counts["reflected"] += 1

    def _next_sequence(self, key: SessionKey) -> int:
        now = self.monotonic()
        sessions = self.sessions
        entry = sessions.pop(key, None)
        sequence = 0 if entry is None or now - entry[1] > SESSION_IDLE_SECONDS else entry[0]
        sessions[key] = (sequence + 1, now)  # the most recently used last
        while len(sessions) > MAX_SESSIONS:
            sessions.popitem(last=False)
        if len(sessions) > 1:
            oldest_key, (_, seen) = next(iter(sessions.items()))
            if now - seen > SESSION_IDLE_SECONDS:
                del sessions[oldest_key]
        return sequence

    def close(self) -> None:
        for sock in self.sockets.values():
            with contextlib.suppress(OSError):
                sock.close()
