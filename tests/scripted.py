"""A scripted clock and network for the prober (exporter.engine's seams).

Fakes, on purpose: pacing, timeouts and the exposition they produce are checked
to the nanosecond here, which the kernel and the wall clock cannot give on a
loaded machine. What only the kernel can show (real sockets, ICMP ids, kernel
timestamps, nftables loss) stays in test_pacing.py, test_agent_netns.py and
test_timing.py, with real packets.
"""

from __future__ import annotations

import asyncio
import errno
import heapq
import struct
from collections.abc import Callable
from typing import Any

from exporter import kernelstamps
from exporter.engine import Prober
from exporter.icmp import EchoReply, RequestBuilder
from exporter.stamp import ntp_timestamp, pack_reflector, unpack_sender

EPOCH_NS = 1_800_000_000 * 10**9  # CLOCK_REALTIME at monotonic 0
_PACKET = struct.Struct("!IH8sQ")  # payload size, sequence, token, counter

# (address, send time in s) -> RTT in seconds, or None for a lost probe
Responder = Callable[[str, float], float | None]


class ScriptedClock:
    """Monotonic seconds that move only when the test (or the prober's sleep) moves them."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def monotonic(self) -> float:
        return self.now

    def time_ns(self) -> int:
        return EPOCH_NS + round(self.now * 1e9)

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)  # let the loop run other tasks, as a real sleep would

    def wake(self) -> None:
        """Nothing to end: a scripted sleep has already moved the clock."""


class ScriptedSocket:
    """Records every send; answers after the RTT its responder gives (or never)."""

    def __init__(
        self,
        clock: ScriptedClock,
        respond: Responder,
        unreachable: frozenset[str] = frozenset(),
        black_holes: dict[str, int] | None = None,
        refused: dict[str, int] | None = None,
    ) -> None:
        self.clock = clock
        self.respond = respond
        self.unreachable = unreachable  # sendto fails with ENETUNREACH, as without a route
        # address -> largest IPv4 packet that crosses the path (bigger ones are lost),
        # or that the kernel sends there at all (bigger ones fail with EMSGSIZE)
        self.black_holes = black_holes or {}
        self.refused = refused or {}
        self.sent: list[tuple[float, str, int]] = []  # (time, address, probe counter)
        self._arrivals: list[tuple[int, int, EchoReply]] = []  # heap of (ns, order, reply)

    def sockaddr(self, address: str) -> tuple[Any, ...]:
        return (address, 0)

    def request_builder(self, token: bytes, payload_size: int) -> RequestBuilder:
        return lambda sequence, counter: _PACKET.pack(payload_size, sequence, token, counter)

    @property
    def sendto(self) -> Callable[[bytes, tuple[Any, ...]], int]:
        return self._sendto

    def _sendto(self, packet: bytes, sockaddr: tuple[Any, ...]) -> int:
        payload, sequence, token, counter = _PACKET.unpack(packet)
        address, now = sockaddr[0], self.clock.now
        if address in self.unreachable:
            raise OSError(errno.ENETUNREACH, "Network is unreachable")
        size = payload + 28
        if size > self.refused.get(address, size):
            raise OSError(errno.EMSGSIZE, "Message too long")
        self.sent.append((now, address, counter))
        rtt = self.respond(address, now)
        if size > self.black_holes.get(address, size):
            rtt = None
        if rtt is not None:
            arrival = self.clock.time_ns() + round(rtt * 1e9)
            reply = (address, sequence, token, counter, arrival)
            heapq.heappush(self._arrivals, (arrival, len(self.sent), reply))
        return len(packet)

    def drain(self, limit: int = 4096) -> list[EchoReply]:
        due: list[EchoReply] = []
        now_ns = self.clock.time_ns()
        while self._arrivals and self._arrivals[0][0] <= now_ns and len(due) < limit:
            due.append(heapq.heappop(self._arrivals)[2])
        return due


# (address, send time in s) -> whether the STAMP packet reaches the peer's reflector
Forward = Callable[[str, float], bool]
REFLECTOR_HOLDS_NS = 10_000


class ScriptedStampSocket:
    """The UDP socket of exporter.stamp_sender, with every peer's stateful reflector
    behind it: ``forward`` says whether a packet reaches the reflector (which then
    numbers it), ``respond`` gives the round trip of its reply or None (lost on the
    way back). The reflector holds each packet REFLECTOR_HOLDS_NS."""

    def __init__(
        self,
        clock: ScriptedClock,
        forward: Forward,
        respond: Responder,
        unreachable: frozenset[str] = frozenset(),
    ) -> None:
        self.clock = clock
        self.forward = forward
        self.respond = respond
        self.unreachable = unreachable  # sendto fails with ENETUNREACH
        self.reflected: dict[str, int] = {}  # per reflector: packets it numbered
        self._arrivals: list[tuple[int, int, bytes, str, int]] = []  # heap
        self._order = 0

    def sendto(self, packet: bytes, address: tuple[Any, ...]) -> int:
        sender = unpack_sender(packet)
        assert sender is not None
        host, now = address[0], self.clock.now
        if host in self.unreachable:
            raise OSError(errno.ENETUNREACH, "Network is unreachable")
        rtt = self.respond(host, now)
        if self.forward(host, now):
            number = self.reflected.get(host, 0)
            self.reflected[host] = number + 1
            if rtt is not None:
                sent_ns = self.clock.time_ns()
                received_ns = sent_ns + round(rtt * 1e9) // 2
                reply = pack_reflector(
                    number,
                    ntp_timestamp(received_ns + REFLECTOR_HOLDS_NS),
                    ntp_timestamp(received_ns),
                    sender,
                    64,
                )
                arrival = sent_ns + round(rtt * 1e9) + REFLECTOR_HOLDS_NS
                self._order += 1
                heapq.heappush(self._arrivals, (arrival, self._order, reply, host, address[1]))
        return len(packet)

    def recvmsg(self, size: int, ancillary: int) -> tuple[bytes, list[Any], int, tuple[Any, ...]]:
        if not self._arrivals or self._arrivals[0][0] > self.clock.time_ns():
            raise BlockingIOError
        arrival, _, reply, host, port = heapq.heappop(self._arrivals)
        stamp = kernelstamps.STAMP.pack(*divmod(arrival, 10**9))
        return reply, [(1, kernelstamps.SO_TIMESTAMPNS, stamp)], 0, (host, port)

    def close(self) -> None:
        pass


def drive(
    prober: Prober,
    clock: ScriptedClock,
    seconds: float,
    lateness: Callable[[int], float] = lambda _: 0.0,
) -> int:
    """Run the prober's rounds for ``seconds`` of scripted time; round i wakes
    ``lateness(i)`` seconds after it asked to (a busy or stalled event loop).
    Returns how many rounds (wake-ups) it took."""
    end = clock.now + seconds
    round_number = 0
    while clock.now < end:
        wake = prober.tick(clock.now)
        prober.stats.observe_lag(0.0, clock.now)
        clock.now = max(wake, clock.now) + lateness(round_number)
        round_number += 1
    return round_number
