"""Each lab fault, proved with real packets between the lab's node namespaces.

A real fault loses everything crossing it, in its direction: the probes to a node
and the replies to the node's own probes, ICMP and UDP alike, ARP too. Most checks
need only the lab's network (lab.network.Network: the hub's bridge and six node
namespaces in three zones, no agents, no Prometheus), with faults applied through
the lab's own Faults, and pings and UDP exchanges run inside the namespaces. The
starve fault needs a real agent: it has a small lab of its own.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from lab.cluster import Lab
from lab.cpu import STARVE_PERCENT
from lab.faults import Fault
from lab.process import alive
from lab.responder import ResponderUnavailable, ensure_responder
from lab.state import LabConfig, LabError, LabState

from .conftest import NETNS_OK, NETNS_WHY, parse_metrics, running_lab, select, wait_for

pytestmark = pytest.mark.skipif(not NETNS_OK, reason=NETNS_WHY)

CONFIG = LabConfig(nodes=6, zones=3, dual_stack=True, prometheus=False)
UDP_PORT = 9999


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """The network of a lab, with its state file, and nothing running in it."""
    lab = Lab(f"faults{os.getpid()}")
    lab.down()
    lab.workdir.create()
    lab.workdir.save(LabState(CONFIG))
    try:
        lab.network.build(CONFIG.node_names(), CONFIG.dual_stack)
        yield lab
    finally:
        lab.down()


@pytest.fixture(autouse=True)
def no_faults_left(lab: Lab) -> Iterator[None]:
    yield
    lab.faults.clear()


def address(node: str, family: int = 4) -> str:
    v4, v6 = CONFIG.addresses(node)
    return v4 if family == 4 else v6


def ping(
    lab: Lab,
    source: str,
    destination: str,
    count: int = 20,
    interval: float = 0.01,
    size: int = 56,
    family: int = 4,
) -> tuple[int, int]:
    """Echo requests sent and replies received; DF set, so a big packet is never
    split. Bounded by -w: ``count`` sends' time and half a second, in whole seconds
    (ping stops earlier once ``count`` replies are in; with fewer it may send more
    than ``count``). Replies here take well under a millisecond."""
    deadline = str(math.ceil(count * interval + 0.5))  # whole seconds only
    out = lab.network.namespace(source).run(
        "ping", f"-{family}", "-q", "-n", "-M", "do", "-c", str(count), "-i", str(interval),
        "-W", "0.5", "-w", deadline, "-s", str(size), address(destination, family),
        check=False,
    )  # fmt: skip
    found = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert found, out
    return int(found.group(1)), int(found.group(2))


def loss(lab: Lab, source: str, destination: str, count: int) -> float:
    """The share of ``count`` pings at 200/s lost."""
    sent, received = ping(lab, source, destination, count=count, interval=0.005)
    return 1 - received / sent


def passes(lab: Lab, source: str, destination: str, **kwargs: int) -> bool:
    return ping(lab, source, destination, **kwargs) == (kwargs.get("count", 20),) * 2


def fails(lab: Lab, source: str, destination: str, **kwargs: int) -> bool:
    return ping(lab, source, destination, **kwargs)[1] == 0


UDP_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(2)  # bounded: gone 2 s after the last datagram
print("ready", flush=True)
received = 0
try:
    while True:
        data, peer = s.recvfrom(100)
        received += 1
        s.sendto(data, peer)
except (TimeoutError, KeyboardInterrupt):  # quiet for 2 s, or told to stop
    pass
print(received, flush=True)
"""

UDP_CLIENT = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
target = (sys.argv[1], int(sys.argv[2]))
for i in range(int(sys.argv[3])):
    s.sendto(b"%d" % i, target)
    time.sleep(0.005)
s.settimeout(0.5)
replies = set()
try:
    while True:
        replies.add(s.recv(100))
except TimeoutError:
    pass
print(len(replies))
"""


def udp(lab: Lab, client: str, server: str, count: int = 20) -> tuple[int, int]:
    """UDP datagrams from ``client`` to an echo server on ``server``: how many the
    server got, and how many echoes came back to the client."""
    serving = lab.network.namespace(server).popen(
        [sys.executable, "-c", UDP_SERVER, address(server), str(UDP_PORT)],
        stdout=subprocess.PIPE,
    )
    try:
        assert serving.stdout is not None
        assert serving.stdout.readline().strip() == b"ready"
        replies = lab.network.namespace(client).run(
            sys.executable, "-c", UDP_CLIENT, address(server), str(UDP_PORT), str(count)
        )
        serving.send_signal(signal.SIGINT)  # no need to wait out its 2 s
        received, _ = serving.communicate(timeout=5)
    finally:
        serving.kill()
        serving.wait(timeout=5)
    got = received.decode().strip().splitlines()
    return int(got[-1]) if got and got[-1].isdigit() else 0, int(replies)


def warm_neighbours(lab: Lab, *pairs: tuple[str, str]) -> None:
    """Both ends of each pair learn each other's MAC address, so that a one-way check
    right after sees the fault act on data packets. (Within seconds the kernel
    re-checks an entry nothing confirms, the fault eats that ARP too, and the node
    stops sending at all: the one-way checks come first.) An entry the previous
    test's fault left failed takes a resolution or two to come back."""
    for a, b in pairs:
        # the previous test's fault may have left the entry failed: a few tries, bounded
        assert any(passes(lab, a, b, count=1) for _ in range(5)), (a, b)


# -- loss -----------------------------------------------------------------------------


def test_node_in_loses_what_arrives_at_the_node_replies_included(lab: Lab) -> None:
    warm_neighbours(lab, ("node-1", "node-3"))
    lab.faults.apply(Fault("node-in", "node-3"))
    # UDP too; node-3's own datagrams still leave it: only the echoes are lost.
    assert udp(lab, "node-3", "node-1") == (20, 0)
    assert udp(lab, "node-1", "node-3") == (0, 0)
    assert udp(lab, "node-1", "node-2") == (20, 20)
    assert fails(lab, "node-1", "node-3")  # the probes into node-3
    assert fails(lab, "node-3", "node-1")  # the replies into node-3
    assert fails(lab, "node-3", "node-1", family=6)
    assert passes(lab, "node-1", "node-2") and passes(lab, "node-2", "node-1")


def test_node_out_loses_what_leaves_the_node_replies_included(lab: Lab) -> None:
    warm_neighbours(lab, ("node-1", "node-3"))
    lab.faults.apply(Fault("node-out", "node-3"))
    assert udp(lab, "node-1", "node-3") == (20, 0)  # arrives, but no echo leaves
    assert udp(lab, "node-3", "node-1") == (0, 0)
    assert fails(lab, "node-3", "node-1")  # node-3's probes
    assert fails(lab, "node-1", "node-3")  # node-3's replies
    assert fails(lab, "node-1", "node-3", family=6)
    assert passes(lab, "node-1", "node-2") and passes(lab, "node-2", "node-1")


def test_partial_loss_is_random_per_packet(lab: Lab) -> None:
    """50 % into node-4: about half the probes to it and half the replies to its own
    probes; 400 packets each, a generous binomial band (± 10 standard deviations)."""
    warm_neighbours(lab, ("node-1", "node-4"))
    lab.faults.apply(Fault("node-in", "node-4", percent=50))
    for source, destination in (("node-1", "node-4"), ("node-4", "node-1")):
        lost = loss(lab, source, destination, count=400)
        assert 0.3 <= lost <= 0.7, (source, destination, lost)
    assert passes(lab, "node-1", "node-2")


def test_a_one_way_link_breaks_the_echo_both_ways(lab: Lab) -> None:
    """node-1 -> node-2 cut: node-2's replies to node-1 cross it too."""
    warm_neighbours(lab, ("node-1", "node-2"))
    lab.faults.apply(Fault("link", "node-1", peer="node-2", both_ways=False))
    assert udp(lab, "node-2", "node-1") == (20, 0)  # node-2 -> node-1 still carries
    assert udp(lab, "node-1", "node-2") == (0, 0)
    assert fails(lab, "node-1", "node-2") and fails(lab, "node-2", "node-1")
    for a, b in (("node-3", "node-1"), ("node-3", "node-2"), ("node-1", "node-3")):
        assert passes(lab, a, b), (a, b)


def test_a_link_both_ways_with_partial_loss(lab: Lab) -> None:
    warm_neighbours(lab, ("node-5", "node-6"))  # ARP through a 75 % loss can take seconds
    lab.faults.apply(Fault("link", "node-5", peer="node-6", percent=50))
    # each echo crosses the link twice: about 75 % lost
    lost = loss(lab, "node-5", "node-6", count=400)
    assert 0.55 <= lost <= 0.95, lost
    assert passes(lab, "node-5", "node-1") and passes(lab, "node-1", "node-6")


def test_isolate_cuts_every_packet_arp_included(lab: Lab) -> None:
    lab.faults.apply(Fault("isolate", "node-5"))
    for a, b in (("node-1", "node-5"), ("node-5", "node-1"), ("node-6", "node-5")):
        assert fails(lab, a, b), (a, b)
    assert fails(lab, "node-1", "node-5", family=6)
    assert passes(lab, "node-1", "node-6") and passes(lab, "node-6", "node-1")
    node_1 = lab.network.namespace("node-1")
    node_1.ip("neigh", "flush", "dev", "eth0")
    assert fails(lab, "node-1", "node-5", count=3)
    neighbour = node_1.ip("neigh", "show", address("node-5"))
    assert "lladdr" not in neighbour, neighbour  # ARP never answered


def test_partition_between_zones_and_nodes(lab: Lab) -> None:
    applied = lab.faults.apply(
        Fault("partition", group_a=("zone-a",), group_b=("zone-b", "node-6"))
    )
    assert (applied.group_a, applied.group_b) == (
        ("node-1", "node-2"),
        ("node-3", "node-4", "node-6"),
    )
    assert lab.workdir.load().faults == [applied]  # stored as nodes
    for a, b in (("node-1", "node-3"), ("node-4", "node-2"), ("node-6", "node-1")):
        assert fails(lab, a, b, count=5), (a, b)
    for a, b in (("node-1", "node-2"), ("node-3", "node-4"), ("node-3", "node-6")):
        assert passes(lab, a, b, count=5), (a, b)  # within a group
    for a, b in (("node-5", "node-1"), ("node-5", "node-3")):
        assert passes(lab, a, b, count=5), (a, b)  # node-5 is on neither side
    assert udp(lab, "node-2", "node-4") == (0, 0)


def test_partition_groups_must_not_overlap_once_zones_are_expanded(lab: Lab) -> None:
    with pytest.raises(LabError, match="overlap: node-1 on both sides"):
        lab.faults.apply(Fault("partition", group_a=("zone-a",), group_b=("node-1", "node-3")))
    with pytest.raises(LabError, match="no zone 'zone-x'"):
        lab.faults.apply(Fault("partition", group_a=("zone-x",), group_b=("node-1",)))
    with pytest.raises(LabError, match="no node 'node-9'"):
        lab.faults.apply(Fault("node-in", "node-9"))
    assert lab.workdir.load().faults == []


def test_size_makes_an_mtu_black_hole(lab: Lab) -> None:
    """Packets over 1000 bytes lost in and out of node-3: a 1428-byte echo vanishes,
    a 84-byte one passes, over IPv4 and IPv6 (40-byte header: 1448 bytes)."""
    lab.faults.apply(Fault("size", "node-3", max_bytes=1000))
    for family in (4, 6):
        assert fails(lab, "node-1", "node-3", size=1400, count=5, family=family), family
        assert fails(lab, "node-3", "node-1", size=1400, count=5, family=family), family
        assert passes(lab, "node-1", "node-3", family=family), family
        assert passes(lab, "node-1", "node-2", size=1400, count=5, family=family), family
    # right at the edge: 1000 bytes pass (IPv4: 28 bytes of headers), 1001 do not
    assert passes(lab, "node-1", "node-3", size=972, count=5)
    assert fails(lab, "node-1", "node-3", size=973, count=5)


def test_size_on_one_link_only(lab: Lab) -> None:
    lab.faults.apply(Fault("size", "node-3", peer="node-4", max_bytes=1000))
    assert fails(lab, "node-4", "node-3", size=1400, count=5)
    assert passes(lab, "node-4", "node-3", count=5)
    assert passes(lab, "node-1", "node-3", size=1400, count=5)


def test_faults_combine(lab: Lab) -> None:
    lab.faults.apply(Fault("node-in", "node-1"))
    lab.faults.apply(Fault("link", "node-3", peer="node-4"))
    lab.faults.apply(Fault("size", "node-6", max_bytes=1000))
    assert fails(lab, "node-2", "node-1") and fails(lab, "node-1", "node-2")
    assert fails(lab, "node-3", "node-4") and fails(lab, "node-4", "node-3")
    assert fails(lab, "node-5", "node-6", size=1400, count=5)
    assert passes(lab, "node-2", "node-3") and passes(lab, "node-5", "node-6")
    lab.faults.clear(node="node-4")  # the link goes; the others stay
    assert {f.kind for f in lab.workdir.load().faults} == {"node-in", "size"}
    assert passes(lab, "node-3", "node-4") and fails(lab, "node-2", "node-1")


def test_latency(lab: Lab) -> None:
    try:
        ensure_responder()
    except ResponderUnavailable as exc:
        pytest.skip(str(exc))
    lab.faults.apply(Fault("latency", "node-2", delay_ms=30))
    # the responder answers 30 ms late: a ping sends more than one before its reply
    wait_for(lambda: ping(lab, "node-1", "node-2", count=1)[1], 10, "the responder answering")
    out = lab.network.namespace("node-1").run(
        "ping", "-q", "-n", "-c", "5", "-i", "0.05", "-W", "1", address("node-2")
    )
    fastest = float(re.search(r"= ([\d.]+)/", out).group(1))  # type: ignore[union-attr]
    assert 30 <= fastest < 40, out
    lab.faults.clear()
    assert lab.workdir.load().responders == {}
    assert passes(lab, "node-1", "node-2")


# -- switched by the clock ------------------------------------------------------------


def test_flap_switches_the_fault_until_cleared(lab: Lab) -> None:
    lab.faults.flap(Fault("node-in", "node-2"), period=1)
    # 6 s of pings at 50/s: some whole seconds lost, some not
    sent, received = ping(lab, "node-1", "node-2", count=300, interval=0.02)
    assert 0.2 <= 1 - received / sent <= 0.8, (sent, received)
    (timer,) = lab.workdir.load().timers
    lab.faults.clear(node="node-2")
    state = lab.workdir.load()
    assert not state.timers and not state.faults and not alive(timer)
    assert passes(lab, "node-1", "node-2")


def test_blip_clears_itself(lab: Lab) -> None:
    lab.faults.pulse(Fault("isolate", "node-2"), seconds=2)
    assert fails(lab, "node-1", "node-2", count=5)  # in force on return
    (timer,) = lab.workdir.load().timers

    def over() -> bool:
        state = lab.workdir.load()
        return not state.faults and not state.timers

    took = wait_for(over, 10, "the blip to clear itself")
    assert 0.5 <= took <= 8, took
    wait_for(lambda: not alive(timer), 5, "the timer process to exit")
    assert passes(lab, "node-1", "node-2")


def test_clear_stops_a_pending_blip(lab: Lab) -> None:
    lab.faults.pulse(Fault("isolate", "node-2"), seconds=60)
    (timer,) = lab.workdir.load().timers
    lab.faults.clear()
    assert not alive(timer) and lab.workdir.load().timers == {}
    assert passes(lab, "node-1", "node-2")


# -- starve: a real agent in a starved cgroup ----------------------------------------------


def agent_figures(lab: Lab, node: str) -> dict[str, float]:
    samples = parse_metrics(lab.agents.metrics(node))
    return {
        name: sum(select(samples, f"kube_node_ping_{name}").values())
        for name in ("event_loop_lag_seconds", "skipped_probes_total", "packets_sent_total")
    }


def test_starve_shows_in_the_agents_own_metrics_and_clears() -> None:
    """node-1's agent held to 1 % of one CPU: its sender wakes up to a second late,
    skips most probes and sends fewer; restarted, it is held again; after clear it
    sends at full rate. Bounded: about 40 s in all."""
    config = LabConfig(nodes=6, zones=3, prometheus=False, output="http")
    with running_lab("starve", config) as lab:
        try:
            lab.cpu.check()
        except LabError as exc:
            pytest.skip(str(exc))
        # by the way: zones reach the agents through the peers file, and status
        for node, zone in (("node-1", "zone-a"), ("node-6", "zone-c")):
            info = select(parse_metrics(lab.agents.metrics(node)), "kube_node_ping_node_info")
            assert [dict(labels).get("zone") for labels in info] == [zone], info
        assert re.search(r"node-3 +zone-b +198\.18\.0\.3 ", lab.status()), lab.status()
        time.sleep(3)
        before = agent_figures(lab, "node-1")
        assert before["event_loop_lag_seconds"] < 0.1, before
        lab.faults.apply(Fault("starve", "node-1", percent=STARVE_PERCENT))
        time.sleep(2)  # the first period of the quota
        start, started = agent_figures(lab, "node-1"), time.monotonic()
        time.sleep(12)
        end, seconds = agent_figures(lab, "node-1"), time.monotonic() - started
        sent = (end["packets_sent_total"] - start["packets_sent_total"]) / seconds
        skipped = (end["skipped_probes_total"] - start["skipped_probes_total"]) / seconds
        print(  # pytest -s: the figures docs/lab.md quotes
            f"\nstarved: lag {end['event_loop_lag_seconds']:.2f}s, {skipped:.0f} skipped/s, "
            f"{sent:.0f} sent/s (before: lag {before['event_loop_lag_seconds']:.3f}s)"
        )
        # unstarved: 5 peers x 20/s = 100 sent/s, nothing skipped, lag of milliseconds
        assert end["event_loop_lag_seconds"] > 0.4, end
        assert skipped > 20, (skipped, start, end)
        assert sent < 80, (sent, start, end)
        # a restarted agent lands in its cgroup again, so the fault keeps holding it
        cgroup = lab.cpu.path("node-1")
        assert cgroup is not None
        lab.agents.restart("node-1")
        restarted = lab.workdir.load().agents["node-1"]
        assert str(restarted) in (cgroup / "cgroup.procs").read_text().split()
        lab.faults.clear()
        lab.wait_ready(timeout=15)
        time.sleep(2)
        start, started = agent_figures(lab, "node-1"), time.monotonic()
        time.sleep(5)
        end, seconds = agent_figures(lab, "node-1"), time.monotonic() - started
        sent = (end["packets_sent_total"] - start["packets_sent_total"]) / seconds
        print(f"after clear: {sent:.0f} sent/s")
        assert sent > 90, (sent, start, end)
        assert end["skipped_probes_total"] == start["skipped_probes_total"], (start, end)
    assert not cgroup.exists()  # down removed it
