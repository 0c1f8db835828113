"""STAMP between real agents in the lab: the loss of each way of a path, as the agents
export it, under the lab's realistic faults (everything crossing a node's bridge port
in one direction, or one protocol only).

Echo cannot tell a node that loses what arrives from one that loses what leaves;
the agents' STAMP counters can. Each phase measures 12 s of probes at 20/s per pair
(about 240 per pair, 700 per way into or out of a node), so a 30 % loss comes out
within a few points and a clean way below 5 %.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator

import pytest

from lab.cluster import Lab
from lab.faults import Fault
from lab.state import LabConfig

from .conftest import NETNS_OK, NETNS_WHY, parse_metrics, running_lab, select

pytestmark = pytest.mark.skipif(not NETNS_OK, reason=NETNS_WHY)

CONFIG = LabConfig(nodes=4, zones=2, prometheus=False, output="http")
NODES = CONFIG.node_names()
MEASURE_S = 12.0
FAMILIES = ("packets_sent", "packets_received", "stamp_packets_sent")
STAMP = ("stamp_packets_sent", "stamp_packets_reached", "stamp_packets_received")

Pair = tuple[str, str]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with running_lab("stamp", CONFIG) as lab:
        yield lab


@pytest.fixture(autouse=True)
def no_faults_left(lab: Lab) -> Iterator[None]:
    yield
    lab.faults.clear()


def counters(lab: Lab) -> dict[str, dict[Pair, float]]:
    """Every agent's per-pair echo and STAMP counters, by family and pair."""
    out: dict[str, dict[Pair, float]] = defaultdict(dict)
    for node in NODES:
        samples = parse_metrics(lab.agents.metrics(node))
        for family in ("packets_sent", "packets_received", *STAMP):
            for labels, value in select(samples, f"kube_node_ping_{family}_total").items():
                names = dict(labels)
                out[family][(names["source_node"], names["destination_node"])] = value
    return out


class Measured:
    """What the agents counted over one phase: echo and UDP round-trip loss per pair,
    and the loss of each way (from, to) as both ends' STAMP senders saw it."""

    def __init__(self, before: dict[str, dict[Pair, float]], after: dict[str, dict[Pair, float]]):
        delta = {f: {p: after[f][p] - before[f].get(p, 0) for p in after[f]} for f in after}
        self.delta = delta
        sent, received = delta["packets_sent"], delta["packets_received"]
        self.echo = {p: 1 - received[p] / sent[p] for p in sent if sent[p]}
        s_sent, reached, s_received = (delta[f] for f in STAMP)
        self.udp = {p: 1 - s_received[p] / s_sent[p] for p in s_sent if s_sent[p]}
        lost: dict[Pair, float] = defaultdict(float)
        crossed: dict[Pair, float] = defaultdict(float)
        for (source, destination), count in s_sent.items():
            lost[(source, destination)] += count - reached[(source, destination)]
            crossed[(source, destination)] += count
            lost[(destination, source)] += (
                reached[(source, destination)] - s_received[(source, destination)]
            )
            crossed[(destination, source)] += reached[(source, destination)]
        self.ways = {w: lost[w] / crossed[w] for w in crossed if crossed[w]}

    def __repr__(self) -> str:
        def show(values: dict[Pair, float]) -> str:
            return " ".join(f"{a[-1]}>{b[-1]}:{v:.0%}" for (a, b), v in sorted(values.items()))

        return f"echo {show(self.echo)}\nudp {show(self.udp)}\nways {show(self.ways)}"


def measure(lab: Lab) -> Measured:
    time.sleep(2)  # probes sent before the fault resolve (timeout 1 s)
    before = counters(lab)
    time.sleep(MEASURE_S)
    return Measured(before, counters(lab))


def check_ways(measured: Measured, lossy: set[Pair]) -> None:
    for way, ratio in measured.ways.items():
        if way in lossy:
            assert 0.22 < ratio < 0.38, f"{way} {ratio:.1%}\n{measured}"
        else:
            assert ratio < 0.05, f"{way} {ratio:.1%}\n{measured}"
    assert {w for w in measured.ways} == {(a, b) for a in NODES for b in NODES if a != b}


def test_node_in_and_node_out_are_told_apart(lab: Lab) -> None:
    """30 % of what arrives at node-2, then 30 % of what leaves node-3: echo loses both
    ways alike; STAMP puts the loss on the ways into node-2, then out of node-3."""
    lab.faults.apply(Fault("node-in", "node-2", percent=30))
    into = measure(lab)
    print(f"\nnode-in node-2 30 %:\n{into}")
    check_ways(into, {(n, "node-2") for n in NODES if n != "node-2"})
    # Echo: every pair with node-2 at either end loses about 30 %, whichever way (240
    # probes a pair: ±4 standard deviations).
    for (source, destination), ratio in into.echo.items():
        expected = "node-2" in (source, destination)
        assert (0.18 < ratio < 0.42) if expected else ratio < 0.05, (source, destination, into)
    lab.faults.clear()
    lab.faults.apply(Fault("node-out", "node-3", percent=30))
    out_of = measure(lab)
    print(f"node-out node-3 30 %:\n{out_of}")
    check_ways(out_of, {("node-3", n) for n in NODES if n != "node-3"})


def test_a_udp_drop_loses_stamp_while_echo_passes(lab: Lab) -> None:
    """A firewall on node-4 dropping every UDP packet arriving there: STAMP to node-4
    and back to node-4's own sender is lost entirely, echo passes; the other pairs'
    UDP is clean."""
    lab.faults.apply(Fault("node-in", "node-4", percent=100, protocol="udp"))
    measured = measure(lab)
    print(f"\nUDP into node-4 dropped:\n{measured}")
    for pair, ratio in measured.echo.items():
        assert ratio < 0.05, (pair, measured)
    for (source, destination), ratio in measured.udp.items():
        if "node-4" in (source, destination):
            assert ratio == 1.0, (source, destination, measured)
        else:
            assert ratio < 0.05, (source, destination, measured)


def test_an_icmp_drop_loses_echo_while_stamp_passes(lab: Lab) -> None:
    """30 % of the ICMP arriving at node-1 dropped (a rate limit): echo to and from
    node-1 loses about 30 %, STAMP everywhere stays clean."""
    lab.faults.apply(Fault("node-in", "node-1", percent=30, protocol="icmp"))
    measured = measure(lab)
    print(f"\nICMP into node-1 30 %:\n{measured}")
    for (source, destination), ratio in measured.echo.items():
        expected = "node-1" in (source, destination)
        assert (0.18 < ratio < 0.42) if expected else ratio < 0.05, (source, destination)
    check_ways(measured, set())
