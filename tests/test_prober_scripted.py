"""The prober on a scripted clock and network (tests/scripted.py): pacing, stalls,
the shortest interval and timeouts, checked exactly instead of against the wall
clock. The same behaviour with real packets: test_pacing.py."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter, defaultdict

import pytest

from exporter.engine import (
    MAX_IDLE_SECONDS,
    MAX_IN_FLIGHT,
    MAX_LATENESS_SECONDS,
    MAX_PROBES_PER_SECOND,
    MAX_ROUND_SECONDS,
    MIN_SLOTS,
    MIN_TICK_SECONDS,
    Prober,
    ProbeSizes,
    SizeProbes,
    SystemClock,
)
from exporter.icmp import EchoReply
from exporter.peers import PeerKey, PeerKind, PeerTable
from exporter.stamp_sender import StampSender

from .scripted import Responder, ScriptedClock, ScriptedSocket, ScriptedStampSocket, drive

TOKEN = b"T" * 8


def setup(
    addresses: list[str], interval: float, timeout: float = 0.3, respond: Responder | None = None
) -> tuple[Prober, ScriptedClock, ScriptedSocket, PeerTable]:
    clock = ScriptedClock()
    sock = ScriptedSocket(clock, respond or (lambda address, at: 0.001))
    table = PeerTable(window=10, per_peer_histogram=False)
    prober = Prober(
        table, {4: sock}, interval, timeout, 56, phase=0.0, clock=clock, node_name="me", token=TOKEN
    )
    table._on_change = prober.peers_changed
    table.replace(
        PeerKind.NODE, [PeerKey(PeerKind.NODE, f"n{i}", a) for i, a in enumerate(addresses)]
    )
    return prober, clock, sock, table


PEERS = [f"198.18.{i // 250}.{i % 250 + 1}" for i in range(200)]


def test_every_peer_once_per_interval_at_a_fixed_offset() -> None:
    prober, clock, sock, _ = setup(PEERS, interval=0.5)
    drive(prober, clock, 2.0)
    per_peer: dict[str, list[float]] = defaultdict(list)
    for at, address, _ in sock.sent:
        per_peer[address].append(at)
    assert set(per_peer) == set(PEERS)
    for times in per_peer.values():
        assert len(times) == 4
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # A send waits for the next round at most one tick.
        assert all(abs(gap - 0.5) <= MIN_TICK_SECONDS + 1e-9 for gap in gaps), gaps
    # Spread, not bursts: 200 peers over 0.5 s is 4 per 10 ms round on average (offsets
    # are hashes of the peers, so some rounds get a few more), never all 200 at once.
    per_round = Counter(round(at, 6) for at, _, _ in sock.sent)
    assert max(per_round.values()) <= 12
    assert prober.stats.skipped_probes == 0


def test_a_stall_skips_what_it_missed_and_bursts_nothing() -> None:
    prober, clock, sock, _ = setup(PEERS, interval=0.5)
    stall = 1.5
    drive(prober, clock, 3.0, lateness=lambda i: stall if i == 50 else 0.0)
    times = [at for at, _, _ in sock.sent]
    worst = max(Counter(times).values())
    # After the stall only probes at most MAX_LATENESS_SECONDS late go out: 400/s * 0.1 s.
    assert worst <= 400 * MAX_LATENESS_SECONDS + 1
    # Everything else that fell due in the stall was skipped, counted, never sent late.
    assert 400 * (stall - MAX_LATENESS_SECONDS) - 5 <= prober.stats.skipped_probes
    assert prober.stats.skipped_probes <= 400 * stall + 5
    sent_plus_skipped = len(sock.sent) + prober.stats.skipped_probes
    assert abs(sent_plus_skipped - 400 * 3.0) <= 200  # one cycle's worth of rounding


def test_the_shortest_interval_is_honoured_on_a_busy_loop() -> None:
    """Defect 13: 20 ms is the shortest interval the settings accept; with every
    round waking 8 ms late, every probe still goes out and none is skipped."""
    for peers in (PEERS[:1], PEERS[:10], PEERS[:50]):
        prober, clock, sock, _ = setup(peers, interval=0.02, timeout=0.01)
        drive(prober, clock, 2.0, lateness=lambda i: 0.008)
        assert prober.stats.skipped_probes == 0
        per_peer = Counter(address for _, address, _ in sock.sent)
        assert all(99 <= per_peer[a] <= 101 for a in peers), per_peer  # 2 s / 20 ms


def test_replies_after_the_timeout_are_lost_and_counted_late() -> None:
    rtts = {"198.18.0.1": 0.002, "198.18.0.2": 0.2, "198.18.0.3": None}
    prober, clock, sock, table = setup(
        list(rtts), interval=0.1, timeout=0.1, respond=lambda a, at: rtts[a]
    )
    drive(prober, clock, 1.0)
    drive(prober, clock, 0.5)  # every probe of the first second resolved
    prober.tick(clock.now)  # take what arrived since the last round
    stats = {p.key.address: p.stats for p in table.snapshot()}
    fast, slow, dead = (stats[a] for a in rtts)
    assert fast.sent >= 10 and fast.received == fast.sent
    assert fast.rtt_ms_sum == fast.received * 2.0  # exact: kernel-stamp arithmetic
    assert slow.received == 0 and slow.sent >= 10
    assert dead.received == 0 and dead.sent >= 10
    # Each slow reply that has arrived by now came too late.
    arrived = sum(1 for at, a, _ in sock.sent if a == "198.18.0.2" and at + 0.2 <= clock.now)
    assert prober.stats.late_replies == arrived
    assert fast.window_summary() == (2.0, 2.0, 0.0)
    assert slow.window_summary() is None  # no reply in the window: no min/max/mdev


def test_a_peer_change_right_after_a_cycle_skips_no_round() -> None:
    """Found in review: a change just after the last send of a cycle used to place the
    prober at the end of the coming cycle, silently skipping one probe to every peer."""
    prober, clock, sock, table = setup(PEERS[:3], interval=1.0)
    drive(prober, clock, 3.0)
    last = max(at for at, _, _ in sock.sent)
    clock.now = last + 0.01
    table.replace(
        PeerKind.NODE,
        [PeerKey(PeerKind.NODE, f"n{i}", a) for i, a in enumerate(PEERS[:3])]
        + [PeerKey(PeerKind.NODE, "new", PEERS[3])],
    )
    drive(prober, clock, 3.0)
    per_peer: dict[str, list[float]] = defaultdict(list)
    for at, address, _ in sock.sent:
        per_peer[address].append(at)
    for address in PEERS[:3]:
        gaps = [b - a for a, b in itertools.pairwise(per_peer[address])]
        assert max(gaps) <= 1.0 + MIN_TICK_SECONDS + 1e-9, (address, gaps)
    assert prober.stats.skipped_probes == 0


def test_more_peers_than_one_prober_can_probe_stretch_the_interval() -> None:
    """2000 peers every 20 ms with replies in 0.9 s would be 90,000 probes in flight:
    more than the 16-bit sequence space. The cycle stretches (and says so) instead of
    reporting live peers as lost."""
    prober, clock, sock, table = setup(PEERS * 10, interval=0.02, timeout=1.0)
    peers = [
        PeerKey(PeerKind.NODE, f"p{i}", f"198.18.{i // 250 + 10}.{i % 250 + 1}")
        for i in range(2000)
    ]
    table.replace(PeerKind.NODE, peers)
    sock.respond = lambda address, at: 0.9
    drive(prober, clock, 5.0)
    expected = max(0.02, 2000 / MAX_PROBES_PER_SECOND, 2000 * 1.0 / MAX_IN_FLIGHT)
    assert prober.cycle_seconds == expected
    stats = [p.stats for p in table.snapshot()]
    assert sum(s.sent for s in stats) > 0
    assert sum(s.received for s in stats) == sum(s.sent for s in stats)  # none taken for lost
    samples = {m.name: m.samples[0].value for m in prober.collect() if m.samples}
    assert samples["kube_node_ping_probe_interval_seconds"] == expected


def test_run_paces_through_its_clock() -> None:
    """The prober's own loop (not drive()) on the scripted clock: its sleeps move the
    clock, and it stops within a round when asked."""
    prober, clock, sock, _ = setup(PEERS[:10], interval=0.1)
    start = clock.now

    async def scenario() -> None:
        task = asyncio.create_task(prober.run())
        while clock.now < start + 1.0:
            await asyncio.sleep(0)
        prober.stop()
        await asyncio.wait_for(task, 1.0)

    asyncio.run(scenario())
    per_peer = Counter(address for _, address, _ in sock.sent)
    assert all(9 <= per_peer[a] <= 11 for a in PEERS[:10]), per_peer
    assert prober.stats.loop_lag_seconds == 0.0 and prober.stats.skipped_probes == 0


def test_a_peer_gone_for_15_seconds_leaves_one_outage_of_15_seconds() -> None:
    """The flicker the project started from: one peer vanishes for 15 s and comes back;
    the other keeps answering. Lost probes are resolved at their timeout, after later
    replies (out of send order), and the outage is still measured from the sends."""
    gone = (1010.0, 1025.0)

    def respond(address: str, at: float) -> float | None:
        if address == "198.18.0.2" and gone[0] <= at < gone[1]:
            return None
        return 0.001

    prober, clock, _, table = setup(["198.18.0.1", "198.18.0.2"], interval=1.0, respond=respond)
    drive(prober, clock, 40.0)
    totals = {peer.key.address: peer.stats.outage_totals() for peer in table.snapshot()}
    assert totals["198.18.0.1"] == (0, 0.0)
    count, seconds = totals["198.18.0.2"]
    assert count == 1
    assert abs(seconds - 15.0) <= 1.0 + 1e-9  # to the probe: sends are 1 s apart


@pytest.mark.parametrize("as_shipped", [False, True])
def test_an_idle_prober_wakes_once_a_second(as_shipped: bool) -> None:
    """No peers, nothing due: one round per MAX_IDLE_SECONDS (the health heartbeat),
    not a round every few milliseconds — the cost a node with no peers pays. As
    shipped (STAMP and size probes on) too: nothing of theirs is due without peers."""
    prober, clock, sock, _ = setup([], interval=1.0)
    if as_shipped:
        stamp_sock = ScriptedStampSocket(clock, lambda a, at: True, lambda a, at: 0.001)
        prober.stamp = StampSender({4: stamp_sock}, 8762, 0.3, "me", ssid=7)
        prober.size_probes = SizeProbes(10.0, route_mtu=lambda address, family: 1500)
        prober._sizes = ProbeSizes(prober.size_probes)
    rounds = drive(prober, clock, 30.0)
    assert rounds == round(30.0 / MAX_IDLE_SECONDS)
    assert not sock.sent


def test_rounds_follow_the_sends_when_every_probe_is_answered() -> None:
    """Four peers probed once a second with a 1 s timeout, every reply in 1 ms: a round
    per send at most (each also takes the replies waiting since the last one), none
    for a deadline, since a later send's round always comes first and finds the answer.
    (With fewer peers than 1/timeout a deadline may come first: then it has its round.)"""
    prober, clock, sock, table = setup(PEERS[:4], interval=1.0, timeout=1.0)
    rounds = drive(prober, clock, 20.0)
    assert len(sock.sent) == 80
    assert rounds <= 80 + 1
    assert sum(p.stats.received for p in table.snapshot()) >= 76  # the last ones in flight


def test_a_lost_probe_is_resolved_at_its_deadline_not_at_the_next_send() -> None:
    """One peer every 10 s, no reply: the loss is counted in one round at its 0.3 s
    timeout, although the next send is 10 s away."""
    prober, clock, sock, table = setup(PEERS[:1], interval=10.0, respond=lambda a, at: None)
    while not sock.sent:
        clock.now = prober.tick(clock.now)
    (peer,) = table.snapshot()
    assert peer.stats.sent == 0
    rounds = drive(prober, clock, 0.3 + 1e-6)
    assert rounds == 1
    assert len(sock.sent) == 1
    assert peer.stats.sent == 1 and peer.stats.received == 0


def test_a_change_of_peers_ends_the_sleep_at_once() -> None:
    """The real clock's sleep ends on wake() (what peers_changed and stop call), so an
    idle prober picks up a new peer without waiting out its idle second."""
    clock = SystemClock()

    async def scenario() -> bool:
        sleeping = asyncio.create_task(clock.sleep(3600.0))
        await asyncio.sleep(0)
        clock.wake()
        await asyncio.wait_for(sleeping, 10.0)
        return sleeping.done()

    assert asyncio.run(scenario())
    woken: list[str] = []
    prober, clock_, _, table = setup([], interval=1.0)
    clock_.wake = lambda: woken.append("wake")  # type: ignore[method-assign]
    table.replace(PeerKind.NODE, [PeerKey(PeerKind.NODE, "n0", PEERS[0])])
    assert woken == ["wake"]
    prober.stop()
    assert woken == ["wake", "wake"]


def test_a_family_without_peers_is_not_read() -> None:
    """IPv4-only peers: the IPv6 socket is never read (each empty read is a system call
    and an exception per round); once an IPv6 peer comes, it is read every round."""
    prober, clock, _, table = setup(PEERS[:3], interval=1.0)
    v6 = ScriptedSocket(clock, lambda address, at: 0.001)
    reads = Counter[str]()
    drain = v6.drain

    def counted(limit: int = 4096) -> list[EchoReply]:
        reads["v6"] += 1
        return drain(limit)

    v6.drain = counted  # type: ignore[method-assign]
    prober.sockets = {4: prober.sockets[4], 6: v6}
    drive(prober, clock, 5.0)
    assert reads["v6"] == 0
    keys = [p.key for p in table.snapshot()]
    table.replace(PeerKind.NODE, [*keys, PeerKey(PeerKind.NODE, "v6", "fd00:198:18:1::1")])
    rounds = drive(prober, clock, 5.0)
    assert reads["v6"] == rounds - 1  # from the round after the one that adds it
    assert sum(1 for _, address, _ in v6.sent if address == "fd00:198:18:1::1") == 5


def test_few_peers_are_probed_in_rounds_each_exactly_once_per_interval() -> None:
    """Ten peers once a second: sends go in rounds on a MAX_ROUND_SECONDS grid (four
    wake-ups a second, not ten), and every peer's sends stay exactly 1 s apart."""
    prober, clock, sock, _ = setup(PEERS[:10], interval=1.0, timeout=1.0)
    rounds = drive(prober, clock, 20.0)
    assert rounds <= 20 / MAX_ROUND_SECONDS + 1
    per_peer: dict[str, list[float]] = defaultdict(list)
    for at, address, _ in sock.sent:
        per_peer[address].append(at)
    assert len(per_peer) == 10
    for times in per_peer.values():
        assert len(times) == 20
        assert all(abs(b - a - 1.0) < 1e-9 for a, b in itertools.pairwise(times)), times


def test_slots_grow_with_the_peers_without_losing_probes_in_flight() -> None:
    """Ten peers need the smallest slot arrays (40 KB, not the 2.2 MB of the whole
    sequence space); 3,000 peers with 0.9 s replies grow them while hundreds of probes
    are in flight, and every one of those is still matched to its reply."""
    prober, clock, _, table = setup(PEERS[:10], interval=1.0, timeout=1.0)
    prober.sockets[4].respond = lambda address, at: 0.9  # type: ignore[attr-defined]
    drive(prober, clock, 3.0)
    assert len(prober._slot_state) == MIN_SLOTS
    many = [f"198.19.{i // 250}.{i % 250 + 1}" for i in range(3000)]
    keys = [p.key for p in table.snapshot()]
    table.replace(
        PeerKind.NODE, [*keys, *(PeerKey(PeerKind.NODE, f"m{i}", a) for i, a in enumerate(many))]
    )
    drive(prober, clock, 5.0)
    assert len(prober._slot_state) == 16384  # 4 x 3,010 probes in flight, rounded up
    stats = [p.stats for p in table.snapshot()]
    assert sum(s.sent for s in stats) > 3000
    assert sum(s.received for s in stats) == sum(s.sent for s in stats)


def test_a_rebuild_on_a_late_round_neither_skips_nor_repeats_it() -> None:
    """The schedule is rebuilt in a round (a size refresh, a peer change) that woke 1 ms
    late, every round here: each peer is still probed exactly once per interval."""
    prober, clock, sock, _ = setup(PEERS[:10], interval=1.0, timeout=1.0)
    end = clock.now + 20.0
    while clock.now < end:
        prober._schedule_dirty = True
        clock.now = prober.tick(clock.now) + 0.001
    per_peer = Counter(address for _, address, _ in sock.sent)
    assert set(per_peer.values()) <= {20, 21}, per_peer
    assert prober.stats.skipped_probes == 0
