"""The prober: paces echo requests to every peer and matches the replies.

One socket per address family and one task. Each tick it drains every socket,
expires timed-out probes, then sends what is due, and sleeps until the next
thing is due: a send, the deadline of the oldest unanswered probe, or at most
MAX_IDLE_SECONDS; a change of peers wakes it at once. A reply waits in its
socket until the next tick; that costs no accuracy, because the RTT uses the
kernel's receive stamp, and it saves a wake-up per reply. So the prober wakes
no more than its sends need (at most every MIN_TICK_SECONDS), and once a
second with nothing to do.

Every peer is probed once per interval at a fixed point of the cycle (its
stable offset plus this process's random phase), so sends are spread evenly and
a DaemonSet rollout does not synchronise the nodes. With few peers the points
are rounded down to a grid (a round of about SENDS_PER_ROUND sends, at most
MAX_ROUND_SECONDS apart): ten peers cost four wake-ups a second, not ten, and a
peer's sends stay exactly one interval apart.

Probes are numbered by a 64-bit counter. The low 16 bits are the ICMP sequence;
the lowest bits index flat per-slot arrays (no object per probe), sized to four
times the probes that can be in flight (1,024 to 65,536 slots: 40 KB for a
small cluster, not 2.2 MB); the whole counter travels
in the payload after a random per-process token, so a reply is accepted only
when source address, sequence, counter and token (and in raw mode the ICMP id)
all match. RTT = kernel receive stamp - send stamp taken just before
``sendto``, both CLOCK_REALTIME. A probe is counted once it resolves: reply
within the timeout, timeout, or failed send.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import os
import time
from array import array
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client.core import Metric

from .icmp import HEADER_BYTES, MAX_PACKET_BYTES, MIN_PAYLOAD_SIZE, EchoReply, RequestBuilder
from .metric_table import (
    DUPLICATE_REPLIES,
    EVENT_LOOP_LAG,
    LATE_REPLIES,
    PROBE_INTERVAL,
    SEND_ERRORS,
    SKIPPED_PROBES,
)
from .peers import Peer, PeerTable
from .stamp_sender import StampSender

log = logging.getLogger(__name__)

SEQUENCE_SLOTS = 1 << 16  # the ICMP sequence space: the most slots there can be
MIN_SLOTS = 1 << 10
# Never sleep less than this between sends: batches small sends instead of
# waking the loop thousands of times per second.
MIN_TICK_SECONDS = 0.01
# Sends go in rounds of about this many when there are few peers, rounds at most
# MAX_ROUND_SECONDS apart (the grid the points in the cycle are rounded down to).
SENDS_PER_ROUND = 4
MAX_ROUND_SECONDS = 0.25
# With nothing due, still wake this often: /healthz's heartbeat shows the loop runs.
MAX_IDLE_SECONDS = 1.0
LAG_WINDOW_SECONDS = 10.0
# A probe more than this late (the loop was blocked or the host suspended) is
# skipped, not sent: catching up would be a burst, and it is not loss.
MAX_LATENESS_SECONDS = 0.1
# What one prober does at most: sends per second (paced on 10 ms ticks, measured
# at 5000/s for about a tenth of a core; docs/benchmarks.md), and probes in flight
# at once (each holds one of the 65,536 ICMP sequence numbers until it resolves).
MAX_PROBES_PER_SECOND = 20_000
MAX_IN_FLIGHT = 60_000


class Clock(Protocol):
    """Time as the prober sees it. Tests pass a scripted clock, so pacing and
    timeouts are checked exactly, not against the wall clock."""

    def monotonic(self) -> float: ...

    def time_ns(self) -> int: ...

    async def sleep(self, seconds: float) -> None: ...

    def wake(self) -> None:
        """End the sleep in progress now (peers changed, stop asked)."""


class SystemClock:
    def __init__(self) -> None:
        self._sleeping: asyncio.Future[None] | None = None

    def monotonic(self) -> float:
        return time.monotonic()

    def time_ns(self) -> int:
        """CLOCK_REALTIME in ns: the clock of the kernel's receive stamps."""
        return time.time_ns()

    async def sleep(self, seconds: float) -> None:
        """asyncio.sleep's own mechanism (a future and a timer), kept so wake() can end it."""
        loop = asyncio.get_running_loop()
        self._sleeping = sleeping = loop.create_future()
        timer = loop.call_later(seconds, _set_done, sleeping)
        try:
            await sleeping
        finally:
            timer.cancel()
            self._sleeping = None

    def wake(self) -> None:
        if self._sleeping is not None:
            _set_done(self._sleeping)


def _power_of_two(at_least: float) -> int:
    return 1 << math.ceil(math.log2(at_least))


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Sender(Protocol):
    """One address family's socket, as the prober uses it (exporter.icmp.EchoSocket)."""

    def sockaddr(self, address: str) -> tuple[Any, ...]: ...

    def request_builder(self, token: bytes, payload_size: int) -> RequestBuilder: ...

    @property
    def sendto(self) -> Callable[[bytes, tuple[Any, ...]], int]: ...

    def drain(self, limit: int = 4096) -> list[EchoReply]: ...


# How to reach a peer: its family's request builder and its socket's sendto.
Route = tuple[RequestBuilder, Callable[[bytes, tuple[Any, ...]], int]]
# What one slot sends: (route or None without a socket, whether it is a size probe) each.
Sends = tuple[tuple[Route | None, bool], ...]
# (offset in the cycle, peer, sockaddr, the echo alone, the echo and a size probe or None,
# the peer's cycle for size probes)
ScheduleEntry = tuple[float, Peer, tuple[Any, ...], Sends, Sends | None, int]
# A size probe's route MTU is looked up again this often (a learnt path MTU expires).
SIZE_REFRESH_SECONDS = 600.0


def _route_mtu(address: str, family: int) -> int | None:
    from .icmp import route_mtu

    return route_mtu(address, family)


@dataclass(frozen=True)
class SizeProbes:
    """Path-MTU probes: one echo request per node peer every ``interval`` seconds (a
    whole number of cycles), never fragmented, ``size`` bytes of IP packet, or with 0
    as large as the route to the peer allows (``route_mtu``, replaceable in tests)."""

    interval: float
    size: int = 0
    route_mtu: Callable[[str, int], int | None] = _route_mtu

    def packet_bytes(self, address: str, family: int) -> int | None:
        """The IP packet size to probe ``address`` with, within what an echo can be;
        None without a route."""
        size = self.size or self.route_mtu(address, family)
        if not size:
            return None
        return min(max(size, HEADER_BYTES[family] + MIN_PAYLOAD_SIZE), MAX_PACKET_BYTES)


class ProbeSizes:
    """Each address's path-MTU probe size, looked up once per SIZE_REFRESH_SECONDS (a
    schedule rebuilt on every discovery change must not ask the kernel per peer)."""

    def __init__(self, probes: SizeProbes) -> None:
        self.probes = probes
        self._sizes: dict[tuple[str, int], int | None] = {}
        self._looked_up = -SIZE_REFRESH_SECONDS

    def next_due(self) -> float:
        return self._looked_up + SIZE_REFRESH_SECONDS

    def refresh(self, now: float) -> None:
        """Forget the sizes: each is looked up again when next asked for."""
        self._sizes.clear()
        self._looked_up = now

    def get(self, address: str, family: int) -> int | None:
        key = (address, family)
        if key not in self._sizes:
            self._sizes[key] = self.probes.packet_bytes(address, family)
        return self._sizes[key]


# States of a sequence slot.
FREE, PENDING, ANSWERED, EXPIRED = 0, 1, 2, 3


class EngineStats:
    """The prober's own health, exported as self-metrics."""

    def __init__(self, now: float) -> None:
        self.send_errors: dict[str, int] = {}
        self.late_replies = 0
        self.duplicate_replies = 0
        self.probes_resolved = 0
        self.skipped_probes = 0
        self.heartbeat = now  # last time the sender ran
        self._lag_now = 0.0
        self._lag_before = 0.0
        self._lag_rotated = now

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
    name = "prober"

    def __init__(
        self,
        table: PeerTable,
        sockets: Mapping[int, Sender],
        interval: float,
        timeout: float,
        payload_size: int,
        phase: float | None = None,
        clock: Clock | None = None,
        node_name: str = "",
        token: bytes | None = None,
        stamp: StampSender | None = None,
        size_probes: SizeProbes | None = None,
    ) -> None:
        self.table = table
        self.stamp = stamp  # STAMP test packets ride on the echo schedule
        self.size_probes = size_probes
        self._sizes = ProbeSizes(size_probes) if size_probes is not None else None
        self.sockets = sockets
        self.interval = interval  # as configured
        self.cycle_seconds = interval  # in force: longer when the peers need it
        self.timeout = timeout
        self.timeout_ns = int(timeout * 1e9)
        self.clock: Clock = clock or SystemClock()
        self.node_name = node_name
        self.stats = EngineStats(self.clock.monotonic())
        self._token = os.urandom(8) if token is None else token
        self._payload_size = payload_size
        self._counter = int.from_bytes(os.urandom(2), "big")  # random start sequence
        # Per slot: probe counter, peer, send stamp, deadline, state, whether a size probe.
        self._slot_counter = array("q")
        self._slot_peer: list[Peer | None] = []
        self._slot_sent_ns = array("q")
        self._slot_deadline = array("d")
        self._slot_state = bytearray()
        self._slot_large = bytearray()
        self._mask = 0  # slot of a probe = counter & mask
        self._in_flight: deque[int] = deque()  # slots, in send order = deadline order
        self._resize_slots(MIN_SLOTS)
        phase = os.urandom(1)[0] / 256 if phase is None else phase
        self._cycle_start = self.clock.monotonic() - phase * interval
        self._schedule: list[ScheduleEntry] = []
        self._next = 0
        self._sent_upto = -1.0  # the point (fraction of the cycle) last passed in this cycle
        self._cycles = 0  # cycles begun: a peer's size probe goes every size_every-th
        self._size_every = 1
        self._schedule_dirty = True
        self._stopping = False
        # Families whose sockets are drained: every family a peer has had (a socket no
        # peer was ever reached over has nothing to read; a dropped family may still
        # have replies on their way).
        self._families: set[int] = set()

    # -- wiring -------------------------------------------------------------

    def peers_changed(self) -> None:
        """Called by the peer table (on the loop) after any change."""
        self._schedule_dirty = True
        self.clock.wake()

    def stop(self) -> None:
        """Send nothing more; run() returns at once. For a prober run on its own
        (tests, benchmarks); the agent's supervisor cancels it."""
        self._stopping = True
        self.clock.wake()

    async def run(self) -> None:
        clock = self.clock
        intended_wake = clock.monotonic()
        while not self._stopping:
            now = clock.monotonic()
            self.stats.observe_lag(max(0.0, now - intended_wake), now)
            intended_wake = self.tick(now)
            await clock.sleep(intended_wake - now)

    def tick(self, now: float) -> float:
        """One round: take the replies, expire timeouts, send what is due.
        Returns when to run the next round: the next send or deadline, no sooner
        than MIN_TICK_SECONDS (sends close together go in one round), no later than
        MAX_IDLE_SECONDS."""
        self.stats.heartbeat = now
        self._drain_all()
        self._expire(now)
        if self.stamp is not None:
            self.stamp.drain(self._families)
            self.stamp.expire(now)
        if self._sizes is not None and now >= self._sizes.next_due():
            self._sizes.refresh(now)
            self._schedule_dirty = True  # look up the route MTUs again
        if self._schedule_dirty:
            self._rebuild_schedule(now)
        send = max(self._send_due(now), now + MIN_TICK_SECONDS)
        deadline = self._slot_deadline[self._in_flight[0]] if self._in_flight else send
        if self.stamp is not None:
            deadline = min(deadline, self.stamp.next_deadline())
        if self._sizes is not None:
            deadline = min(deadline, self._sizes.next_due())
        # A deadline gets a round of its own only well before the next send: a round
        # just before a send would push that send MIN_TICK_SECONDS late.
        deadline = max(deadline, now + MIN_TICK_SECONDS)
        wake = deadline if deadline < send - MIN_TICK_SECONDS else send
        return min(wake, now + MAX_IDLE_SECONDS)

    def collect(self) -> Iterator[Metric]:
        me, stats = self.node_name, self.stats
        yield LATE_REPLIES.sample(stats.late_replies, me)
        yield SKIPPED_PROBES.sample(stats.skipped_probes, me)
        yield DUPLICATE_REPLIES.sample(stats.duplicate_replies, me)
        errors = sorted(dict(stats.send_errors).items())  # copied: the loop writes it
        yield SEND_ERRORS.samples(((me, reason), count) for reason, count in errors)
        yield EVENT_LOOP_LAG.sample(stats.loop_lag_seconds, me)
        yield PROBE_INTERVAL.sample(self.cycle_seconds, me)
        if self.stamp is not None:
            yield from self.stamp.collect()

    # -- sending ------------------------------------------------------------

    def _rebuild_schedule(self, now: float) -> None:
        """Peers sorted by their offset in the cycle, each with how to reach it."""
        token = self._token
        routes: dict[int, Route] = {
            family: (sock.request_builder(token, self._payload_size), sock.sendto)
            for family, sock in self.sockets.items()
        }
        peers = sorted(self.table.snapshot(), key=lambda p: (p.offset, p.key))
        self._set_cycle(len(peers))
        sizes = self._sizes
        if sizes is not None:
            self._size_every = max(1, round(sizes.probes.interval / self.cycle_seconds))
        per_peer = 1 + (1 / self._size_every if sizes is not None else 0)  # echo, size probe
        in_flight = len(peers) / self.cycle_seconds * self.timeout * per_peer
        if 4 * in_flight > len(self._slot_state):
            self._resize_slots(min(SEQUENCE_SLOTS, _power_of_two(4 * in_flight)))
        large_builders: dict[tuple[int, int], RequestBuilder] = {}
        schedule: list[ScheduleEntry] = []
        # Rounds per cycle: MIN_TICK_SECONDS alone would batch nothing between peers
        # 100 ms apart. A power of two, so the grid changes only when the peers double or
        # halve (each change moves some peers' points: one probe more or less then), and
        # rounding down keeps the order of the offsets.
        rounds = _power_of_two(
            max(self.cycle_seconds / MAX_ROUND_SECONDS, len(peers) / SENDS_PER_ROUND, 1)
        )
        on_grid = self.cycle_seconds / rounds > MIN_TICK_SECONDS
        for peer in peers:
            key = peer.key
            sock = self.sockets.get(key.family)
            sockaddr = sock.sockaddr(key.address) if sock else ()
            echo: Sends = ((routes.get(key.family), False),)
            with_size: Sends | None = None
            if sizes is not None and peer.large is not None and sock is not None:
                size = sizes.get(key.address, key.family)
                peer.large.size = size or 0  # no route: no size probe, no size shown
                if size is not None:
                    payload = (key.family, size - HEADER_BYTES[key.family])
                    if payload not in large_builders:
                        large_builders[payload] = sock.request_builder(token, payload[1])
                    with_size = (*echo, ((large_builders[payload], sock.sendto), True))
            phase = int(peer.offset * self._size_every)
            point = math.floor(peer.offset * rounds) / rounds if on_grid else peer.offset
            schedule.append((point, peer, sockaddr, echo, with_size, phase))
            self._families.add(key.family)
        self._schedule = schedule
        if self._cycle_start > now:
            # _send_due moved on to the next cycle after this one's last send: find our
            # place in the cycle we are in, or the next round would be skipped.
            self._cycle_start -= self.cycle_seconds
            self._cycles -= 1
            self._sent_upto = 2.0  # that cycle's points all sent
        # Go on after the last point sent in this cycle, and send now what fell due
        # within the last MIN_TICK_SECONDS (this round's own points, when the rebuild
        # comes on a round's tick); what fell due earlier waits for the next cycle.
        position = ((now - self._cycle_start) / self.cycle_seconds) % 1.0
        after = max(self._sent_upto, position - MIN_TICK_SECONDS / self.cycle_seconds)
        self._next = bisect_right([entry[0] for entry in schedule], after)
        self._schedule_dirty = False

    def _resize_slots(self, size: int) -> None:
        """Grow the slot arrays to ``size`` (a power of two), moving the probes in flight
        to their slots in the larger arrays. (A reply to a probe answered before the
        move is not recognised as a duplicate after it: it is ignored.)"""
        old = self._slot_arrays()
        self._slot_counter = array("q", [-1]) * size
        self._slot_peer = [None] * size
        self._slot_sent_ns = array("q", [0]) * size
        self._slot_deadline = array("d", [0.0]) * size
        self._slot_state = bytearray(size)
        self._slot_large = bytearray(size)
        self._mask = size - 1
        new = self._slot_arrays()
        moved: deque[int] = deque()
        for slot in self._in_flight:
            to = old[0][slot] & self._mask
            for before, after in zip(old, new, strict=True):
                after[to] = before[slot]
            moved.append(to)
        self._in_flight = moved

    def _slot_arrays(self) -> tuple[Any, ...]:
        return (
            self._slot_counter,
            self._slot_peer,
            self._slot_sent_ns,
            self._slot_deadline,
            self._slot_state,
            self._slot_large,
        )

    def _set_cycle(self, peers: int) -> None:
        """Probe each peer every --interval, unless that is more than this prober can
        do: more sends per second than it paces, or more probes in flight at once than
        the 16-bit sequence space holds (a probe would be taken for lost while its
        reply was still on its way). Then the cycle is stretched, said once in the
        log, and shown in kube_node_ping_probe_interval_seconds."""
        cycle = max(
            self.interval,
            peers / MAX_PROBES_PER_SECOND,
            peers * self.timeout / MAX_IN_FLIGHT,
        )
        if cycle != self.cycle_seconds:
            log.log(
                logging.WARNING if cycle > self.interval else logging.INFO,
                "probe interval in force changed",
                extra={"interval": round(cycle, 6), "configured": self.interval, "peers": peers},
            )
            self.cycle_seconds = cycle

    def _send_due(self, now: float) -> float:
        """Send every probe whose point in the cycle has passed; return when the next is due.

        The hot path: one iteration per probe, so everything is bound to locals.
        """
        interval = self.cycle_seconds
        behind = int((now - self._cycle_start - MAX_LATENESS_SECONDS) / interval)
        if behind >= 1:
            # Every probe left in this cycle, and in the next behind - 1, is more than
            # MAX_LATENESS_SECONDS late (loop stalled, host suspended): skip them in one
            # step, counted, instead of walking them one by one.
            count = len(self._schedule)
            self.stats.skipped_probes += count - self._next + (behind - 1) * count
            self._cycle_start += behind * interval
            self._cycles += behind
            self._next, self._sent_upto = 0, -1.0
        schedule = self._schedule
        if not schedule:
            return now + MAX_IDLE_SECONDS
        count = len(schedule)
        index, cycle_start, counter = self._next, self._cycle_start, self._counter
        cycles, size_every, sent_upto = self._cycles, self._size_every, self._sent_upto
        deadline = now + self.timeout
        slot_state, slot_peer = self._slot_state, self._slot_peer
        slot_counter, slot_sent_ns = self._slot_counter, self._slot_sent_ns
        slot_deadline, slot_large, in_flight, mask = (
            self._slot_deadline,
            self._slot_large,
            self._in_flight,
            self._mask,
        )
        time_ns = self.clock.time_ns
        stamp_send = self.stamp.send if self.stamp is not None else None
        try:
            while True:
                if index >= count:
                    cycle_start += interval
                    cycles += 1
                    index, sent_upto = 0, -1.0
                offset, peer, sockaddr, echo, with_size, size_phase = schedule[index]
                due = cycle_start + offset * interval
                if due > now:
                    return due
                index, sent_upto = index + 1, offset
                if now - due > MAX_LATENESS_SECONDS:
                    self.stats.skipped_probes += 1  # missed while the loop was stalled
                    continue
                if stamp_send is not None:
                    stamp_send(peer, now, time_ns())
                sends = echo
                if with_size is not None and (cycles + size_phase) % size_every == 0:
                    sends = with_size
                for route, large in sends:
                    counter += 1
                    if route is None:
                        self.stats.count_send_error("no_socket")
                        self._resolve_lost(peer, time_ns(), large)
                        continue
                    build, sendto = route
                    packet = build(counter & 0xFFFF, counter)  # the ICMP sequence: 16 bits
                    slot = counter & mask
                    sent_ns = time_ns()
                    try:
                        sendto(packet, sockaddr)
                    except OSError as exc:
                        self._send_failed(peer, sent_ns, large, exc)
                        continue
                    if slot_state[slot] == PENDING:
                        # Every slot in flight: the oldest is reused before it expired.
                        old = slot_peer[slot]
                        assert old is not None
                        self._resolve_lost(old, slot_sent_ns[slot], slot_large[slot])
                    slot_counter[slot] = counter
                    slot_peer[slot] = peer
                    slot_sent_ns[slot] = sent_ns
                    slot_deadline[slot] = deadline
                    slot_state[slot] = PENDING
                    slot_large[slot] = large
                    in_flight.append(slot)
        finally:
            self._next, self._cycle_start, self._counter = index, cycle_start, counter
            self._cycles, self._sent_upto = cycles, sent_upto

    def _send_failed(self, peer: Peer, sent_ns: int, large: bool, exc: OSError) -> None:
        """The kernel refused a probe: lost, or for a size probe bigger than the path
        MTU the kernel knows (EMSGSIZE), refused — not loss on the wire, no error."""
        if large and exc.errno == errno.EMSGSIZE and peer.large is not None:
            peer.large.record_refused()
            self.stats.probes_resolved += 1
            return
        self.stats.count_send_error(errno.errorcode.get(exc.errno or 0, "unknown"))
        self._resolve_lost(peer, sent_ns, large)

    # -- receiving ----------------------------------------------------------

    def _drain_all(self) -> None:
        for family in self._families:
            sock = self.sockets.get(family)
            if sock is not None:
                self._handle_replies(sock.drain())

    def _handle_replies(self, replies: list[EchoReply]) -> None:
        token, timeout_ns, mask = self._token, self.timeout_ns, self._mask
        slot_state, slot_peer = self._slot_state, self._slot_peer
        slot_counter, slot_sent_ns = self._slot_counter, self._slot_sent_ns
        slot_large, stats = self._slot_large, self.stats
        for source, sequence, reply_token, counter, received_ns in replies:
            slot = sequence & mask
            peer = slot_peer[slot]
            if (
                peer is None
                or slot_counter[slot] != counter
                or reply_token != token
                or peer.key.address != source
            ):
                continue  # not ours (another pinger on this host) or corrupted
            state = slot_state[slot]
            if state != PENDING:
                if state == ANSWERED:
                    stats.duplicate_replies += 1
                else:
                    stats.late_replies += 1
                continue
            sent_ns = slot_sent_ns[slot]
            rtt_ns = received_ns - sent_ns
            if rtt_ns > timeout_ns:
                # Arrived after its timeout, before the expiry pass got to it.
                slot_state[slot] = EXPIRED
                stats.late_replies += 1
                self._resolve_lost(peer, sent_ns, slot_large[slot])
                continue
            slot_state[slot] = ANSWERED
            stats.probes_resolved += 1
            if slot_large[slot]:
                peer.large.record_reply()  # type: ignore[union-attr]
                continue
            peer.stats.record_reply(max(rtt_ns, 0) / 1e6, sent_ns)

    # -- timeouts -----------------------------------------------------------

    def _expire(self, now: float) -> None:
        """Resolve as lost every probe past its deadline, and forget answered ones at
        the front, so that the front is the next deadline to wake for."""
        in_flight = self._in_flight
        deadline = self._slot_deadline
        state = self._slot_state
        while in_flight and (deadline[in_flight[0]] <= now or state[in_flight[0]] != PENDING):
            slot = in_flight.popleft()
            if state[slot] == PENDING:
                state[slot] = EXPIRED
                peer = self._slot_peer[slot]
                self._resolve_lost(peer, self._slot_sent_ns[slot], self._slot_large[slot])  # type: ignore[arg-type]

    def _resolve_lost(self, peer: Peer, sent_ns: int, large: int = 0) -> None:
        if large and peer.large is not None:
            peer.large.record_loss()
        else:
            peer.stats.record_loss(sent_ns)
        self.stats.probes_resolved += 1
