"""The prober: paces echo requests to every peer and matches the replies.

One socket per address family, one reader per socket (``loop.add_reader``), one
sender task. Every peer is probed once per interval at a fixed point of the
cycle (its stable offset plus this process's random phase), so sends are spread
evenly and a DaemonSet rollout does not synchronise the nodes.

Probes are numbered by a 64-bit counter. The low 16 bits are the ICMP sequence
and index a ring of in-flight records; the whole counter travels in the payload
after a random per-process token, so a reply is accepted only when source
address, sequence, counter and token (and in raw mode the ICMP id) all match.
RTT = kernel receive stamp - send stamp taken just before ``sendto``, both
CLOCK_REALTIME. A probe is counted once it resolves: reply within the timeout,
timeout, or failed send.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from bisect import bisect_left
from collections import deque
from enum import IntEnum

from .icmp import PAYLOAD_HEADER, EchoReply, EchoSocket
from .peers import Peer, PeerKind, PeerTable
from .stats import Histogram

log = logging.getLogger(__name__)

SEQUENCE_SLOTS = 1 << 16
# Never sleep less than this between sends: batches small sends instead of
# waking the loop thousands of times per second.
MIN_TICK_SECONDS = 0.004
# Wake at least this often to expire timeouts and pick up peer changes.
MAX_TICK_SECONDS = 0.1
LAG_WINDOW_SECONDS = 10.0


class ProbeState(IntEnum):
    PENDING = 0
    ANSWERED = 1
    EXPIRED = 2


class Probe:
    __slots__ = ("counter", "deadline", "peer", "sent_ns", "state")

    def __init__(self, counter: int, peer: Peer, sent_ns: int, deadline: float) -> None:
        self.counter = counter
        self.peer = peer
        self.sent_ns = sent_ns
        self.deadline = deadline  # monotonic seconds
        self.state = ProbeState.PENDING


class EngineStats:
    """The prober's own health, exported as self-metrics."""

    def __init__(self) -> None:
        self.send_errors: dict[str, int] = {}
        self.late_replies = 0
        self.duplicate_replies = 0
        self.probes_resolved = 0
        self.histogram = Histogram()  # all node peers of this source
        self.external_histogram = Histogram()
        self.heartbeat = time.monotonic()  # last time the sender ran
        self._lag_now = 0.0
        self._lag_before = 0.0
        self._lag_rotated = time.monotonic()

    def observe_lag(self, lag: float, now: float) -> None:
        if now - self._lag_rotated >= LAG_WINDOW_SECONDS:
            self._lag_before, self._lag_now = self._lag_now, 0.0
            self._lag_rotated = now
        self._lag_now = max(self._lag_now, lag)

    @property
    def loop_lag_seconds(self) -> float:
        """Worst lateness of the sender's wake-ups over the last 10-20 s."""
        return max(self._lag_now, self._lag_before)

    def count_send_error(self, reason: str) -> None:
        self.send_errors[reason] = self.send_errors.get(reason, 0) + 1


class Prober:
    def __init__(
        self,
        table: PeerTable,
        sockets: dict[int, EchoSocket],
        interval: float,
        timeout: float,
        payload_size: int,
        phase: float | None = None,
    ) -> None:
        self.table = table
        self.sockets = sockets
        self.interval = interval
        self.timeout = timeout
        self.timeout_ns = int(timeout * 1e9)
        self.stats = EngineStats()
        self._token = os.urandom(8)
        self._padding = b"\x00" * (payload_size - PAYLOAD_HEADER.size)
        self._counter = int.from_bytes(os.urandom(2), "big")  # random start sequence
        self._slots: list[Probe | None] = [None] * SEQUENCE_SLOTS
        self._in_flight: deque[Probe] = deque()
        phase = os.urandom(1)[0] / 256 if phase is None else phase
        self._cycle_start = time.monotonic() - phase * interval
        self._schedule: list[Peer] = []
        self._offsets: list[float] = []
        self._next = 0
        self._schedule_dirty = True
        self._stopping = False

    # -- wiring -------------------------------------------------------------

    def peers_changed(self) -> None:
        """Called by the peer table (on the loop) after any change."""
        self._schedule_dirty = True

    def stop(self) -> None:
        """Send nothing more; run() returns within one tick (≤ MAX_TICK_SECONDS)."""
        self._stopping = True

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for family, sock in self.sockets.items():
            loop.add_reader(sock.fileno(), self._on_readable, family)
        try:
            await self._send_loop()
        finally:
            for sock in self.sockets.values():
                loop.remove_reader(sock.fileno())

    # -- sending ------------------------------------------------------------

    def _rebuild_schedule(self, now: float) -> None:
        peers = sorted(self.table.snapshot(), key=lambda p: (p.offset, p.key))
        self._schedule = peers
        self._offsets = [p.offset for p in peers]
        position = ((now - self._cycle_start) / self.interval) % 1.0
        self._next = bisect_left(self._offsets, position)
        self._schedule_dirty = False

    async def _send_loop(self) -> None:
        intended_wake = time.monotonic()
        while not self._stopping:
            now = time.monotonic()
            self.stats.observe_lag(max(0.0, now - intended_wake), now)
            self.stats.heartbeat = now
            self._drain_all()
            self._expire(now)
            if self._schedule_dirty:
                self._rebuild_schedule(now)
            next_due = self._send_due(now)
            intended_wake = min(max(next_due, now + MIN_TICK_SECONDS), now + MAX_TICK_SECONDS)
            await asyncio.sleep(intended_wake - now)

    def _send_due(self, now: float) -> float:
        """Send every probe whose slot has passed; return when the next is due."""
        if now - self._cycle_start > 2 * self.interval:
            # Fell far behind (suspended, starved): skip ahead, never burst-catch-up.
            behind = int((now - self._cycle_start) / self.interval)
            self._cycle_start += behind * self.interval
            self._next = 0
        schedule = self._schedule
        while schedule:
            if self._next >= len(schedule):
                self._cycle_start += self.interval
                self._next = 0
            peer = schedule[self._next]
            due = self._cycle_start + peer.offset * self.interval
            if due > now:
                return due
            self._send(peer, now)
            self._next += 1
        return now + MAX_TICK_SECONDS

    def _send(self, peer: Peer, now: float) -> None:
        key = peer.key
        self._counter += 1
        counter = self._counter
        sock = self.sockets.get(key.family)
        if sock is None:
            self.stats.count_send_error("no_socket")
            self._resolve_lost(peer)
            return
        sequence = counter & 0xFFFF
        payload = PAYLOAD_HEADER.pack(self._token, counter) + self._padding
        packet = sock.build_request(sequence, payload)
        sockaddr = sock.sockaddr(key.address)
        sent_ns = time.time_ns()
        try:
            sock.send_packet(packet, sockaddr)
        except OSError as exc:
            reason = errno.errorcode.get(exc.errno or 0, "unknown")
            self.stats.count_send_error(reason)
            self._resolve_lost(peer)
            return
        probe = Probe(counter, peer, sent_ns, now + self.timeout)
        self._slots[sequence] = probe
        self._in_flight.append(probe)

    # -- receiving ----------------------------------------------------------

    def _on_readable(self, family: int) -> None:
        self._handle_replies(self.sockets[family].drain())

    def _drain_all(self) -> None:
        for sock in self.sockets.values():
            self._handle_replies(sock.drain())

    def _handle_replies(self, replies: list[EchoReply]) -> None:
        slots = self._slots
        token = self._token
        for reply in replies:
            probe = slots[reply.sequence]
            if (
                probe is None
                or reply.token != token
                or probe.counter != reply.counter
                or (probe.counter & 0xFFFF) != reply.sequence
                or probe.peer.key.address != reply.source
            ):
                continue  # not ours (another pinger on this host) or corrupted
            if probe.state is ProbeState.ANSWERED:
                self.stats.duplicate_replies += 1
                continue
            if probe.state is ProbeState.EXPIRED:
                self.stats.late_replies += 1
                continue
            rtt_ns = reply.received_ns - probe.sent_ns
            if rtt_ns > self.timeout_ns:
                # Arrived after its timeout but before the expiry pass saw it.
                probe.state = ProbeState.EXPIRED
                self.stats.late_replies += 1
                self._resolve_lost(probe.peer)
                continue
            probe.state = ProbeState.ANSWERED
            rtt_ms = max(rtt_ns, 0) / 1e6
            probe.peer.stats.record_reply(rtt_ms)
            self._histogram_for(probe.peer).observe(rtt_ms / 1000.0)
            self.stats.probes_resolved += 1

    def _histogram_for(self, peer: Peer) -> Histogram:
        if peer.key.kind is PeerKind.EXTERNAL:
            return self.stats.external_histogram
        return self.stats.histogram

    # -- timeouts -----------------------------------------------------------

    def _expire(self, now: float) -> None:
        in_flight = self._in_flight
        while in_flight and in_flight[0].deadline <= now:
            probe = in_flight.popleft()
            if probe.state is ProbeState.PENDING:
                probe.state = ProbeState.EXPIRED
                self._resolve_lost(probe.peer)

    def _resolve_lost(self, peer: Peer) -> None:
        peer.stats.record_loss()
        self.stats.probes_resolved += 1
