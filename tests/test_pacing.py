"""Pacing: each peer once per interval, sends spread over the interval, no bursts.

A real Prober with a real ICMP socket probing loopback addresses (127.0.0.0/8,
answered by this host's kernel); each send time is recorded on its way to the
real sendto.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest

from exporter.engine import Prober
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
        for index, (offset, peer, route, sockaddr) in enumerate(prober._schedule):
            assert route is not None
            build, sendto = route

            def spy(packet: bytes, address: tuple[Any, ...], _send: Send = sendto) -> int:
                sends.append((time.monotonic(), str(address[0])))
                return _send(packet, address)

            prober._schedule[index] = (offset, peer, (build, spy), sockaddr)

    prober._rebuild_schedule = spying_rebuild  # type: ignore[method-assign]
    return prober, sends


async def run_for(prober: Prober, seconds: float, stall: float = 0.0) -> None:
    task = asyncio.create_task(prober.run())
    await asyncio.sleep(seconds / 2)
    time.sleep(stall)  # the loop is blocked: a GC pause, a suspended VM
    await asyncio.sleep(seconds / 2)
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
        assert all(abs(gap - interval) < 0.1 for gap in gaps), gaps  # a tick plus CI jitter
    # 200 peers over 0.5 s = 4 sends per 10 ms tick; a burst would be all 200 at once.
    start, end = sends[0][0], sends[-1][0]
    windows: dict[int, int] = defaultdict(int)
    for at, _ in sends:
        windows[int((at - start) / 0.05)] += 1
    full = [windows[w] for w in range(1, int((end - start) / 0.05) - 1)]
    assert max(full) <= 40 and min(full) >= 5, full  # 20 expected in each 50 ms


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


def test_no_catch_up_burst_after_a_stall() -> None:
    interval = 0.5
    prober, sends = make_prober(interval, phase=0.0)
    asyncio.run(run_for(prober, 2.0, stall=1.5))  # blocked for three intervals
    times = [at for at, _ in sends]
    worst = max(sum(1 for t in times if s <= t < s + 0.02) for s in times)
    assert worst <= 40  # the usual 10 ms batch of 4, with slack; a catch-up would be hundreds
    assert prober.stats.skipped_probes >= 400  # the stalled 1.5 s were skipped, not sent late
