"""Pacing with real packets: each peer once per interval, in a stable order.

A real Prober with a real ICMP socket probing loopback addresses (127.0.0.0/8,
answered by this host's kernel); each send time is recorded on its way to the
real sendto. The exact timing (spread, stalls, the shortest interval) is
checked on a scripted clock in test_prober_scripted.py; here the bounds are
loose on purpose, so a loaded machine cannot fail them.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest

from exporter.engine import Prober, Sends
from exporter.icmp import IcmpMode, IcmpUnavailable, open_echo_socket, resolve_mode
from exporter.peers import PeerKey, PeerKind, PeerTable

Send = Callable[[bytes, tuple[Any, ...]], int]
PEERS = [f"127.0.{i // 250}.{i % 250 + 2}" for i in range(200)]


def make_prober(interval: float, phase: float) -> tuple[Prober, list[tuple[float, str]]]:
    try:
        mode = resolve_mode(IcmpMode.AUTO)
    except IcmpUnavailable as exc:
        pytest.skip(str(exc))
    table = PeerTable(window=10, per_peer_histogram=False)
    prober = Prober(
        table, {4: open_echo_socket(4, raw=mode is IcmpMode.RAW)}, interval, 1.0, 56, phase=phase
    )
    table._on_change = prober.peers_changed
    table.replace(PeerKind.NODE, [PeerKey(PeerKind.NODE, f"n{i}", a) for i, a in enumerate(PEERS)])
    sends: list[tuple[float, str]] = []
    rebuild = prober._rebuild_schedule

    def spying_rebuild(now: float) -> None:
        rebuild(now)
        for index, (offset, peer, sockaddr, echo, _, phase) in enumerate(prober._schedule):
            ((route, _large),) = echo
            assert route is not None
            build, sendto = route

            def spy(packet: bytes, address: tuple[Any, ...], _send: Send = sendto) -> int:
                sends.append((time.monotonic(), str(address[0])))
                return _send(packet, address)

            spied: Sends = (((build, spy), False),)
            prober._schedule[index] = (offset, peer, sockaddr, spied, None, phase)

    prober._rebuild_schedule = spying_rebuild  # type: ignore[method-assign]
    return prober, sends


async def run_for(prober: Prober, seconds: float) -> None:
    task = asyncio.create_task(prober.run())
    await asyncio.sleep(seconds)
    prober.stop()
    await task


def test_every_peer_once_per_interval_spread_evenly() -> None:
    interval = 0.5
    prober, sends = make_prober(interval, phase=0.3)
    asyncio.run(run_for(prober, 2.0))
    per_peer: dict[str, list[float]] = defaultdict(list)
    for at, address in sends:
        per_peer[address].append(at)
    assert set(per_peer) == set(PEERS)
    for times in per_peer.values():
        assert 3 <= len(times) <= 5
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(0.25 < gap < 0.75 for gap in gaps), gaps  # once per interval, not bursts
    assert prober.stats.probes_resolved > 0  # the kernel answered through the real socket


def test_offsets_are_stable_and_the_phase_shifts_them() -> None:
    a, sends_a = make_prober(0.5, phase=0.0)
    b, sends_b = make_prober(0.5, phase=0.5)
    asyncio.run(run_for(a, 1.0))
    asyncio.run(run_for(b, 1.0))
    # Same cyclic order of peers (stable per-peer offsets) in both processes...
    order_a = [address for _, address in sends_a[:200]]
    order_b = [address for _, address in sends_b[:200]]
    pivot = order_b.index(order_a[0])
    assert order_b[pivot:] + order_b[:pivot] == order_a
    # ...but starting at a different point of it: the phase differs per process.
    assert order_a[0] != order_b[0]
