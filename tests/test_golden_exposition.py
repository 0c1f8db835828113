"""Golden exposition: a scripted prober run renders exactly tests/golden/*.prom.

As node_exporter's fixtures: the whole /metrics text (both formats) for a fixed
sequence of replies, losses and peer changes on a scripted clock
(tests/scripted.py), so any change to names, labels, help, order or values
shows up as a diff. Needs no root. After an intended change, regenerate with
``UPDATE_GOLDEN=1 pytest tests/test_golden_exposition.py`` and review the diff.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest.mock import patch

import pytest
from prometheus_client import CollectorRegistry

from exporter.config import ExternalTarget
from exporter.discovery import DiscoveryState, NodeSink, external
from exporter.discovery.external import ExternalTargets
from exporter.discovery.static import StaticDiscovery
from exporter.engine import Prober, SizeProbes
from exporter.exposition import Exposition
from exporter.metric_table import FULL_ONLY_PAIR_FAMILIES
from exporter.metrics import AgentCollector
from exporter.peers import NodeAddress, PeerTable
from exporter.reflector import Reflector
from exporter.server import HttpServer
from exporter.stamp_sender import StampSender
from exporter.supervisor import Supervisor
from exporter.textfile import TextfileWriter

from .scripted import ScriptedClock, ScriptedSocket, ScriptedStampSocket, drive

GOLDEN = Path(__file__).parent / "golden"
V4, V6 = "198.18.0", "fd00:198:18::"


def respond(address: str, at: float) -> float | None:
    """n1 answers every other probe too late (80 ms, timeout 50 ms) and the rest in 0.5 ms,
    n2 in 1.5 ms on both families, dns in 12 ms, others in 0.25 ms; n5 never answers;
    n3 is gone for 3.5 s once (an outage); plus 10 µs per 100 ms of the clock (some
    spread). n6 has no route (send errors)."""
    spread = round(at * 10) % 3 * 0.00001
    if address == f"{V4}.4" and 1001.55 <= at < 1005.05:
        return None
    if address == f"{V4}.2":
        return 0.08 if round(at * 10) % 2 else 0.0005 + spread
    if address == f"{V4}.6":
        return None
    if address in (f"{V4}.3", f"{V6}3"):
        return 0.0015 + spread
    if address == f"{V4}.100":
        return 0.012 + spread
    return 0.00025 + spread


def nodes(*pairs: tuple[str, str]) -> list[NodeAddress]:
    by_name: dict[str, list[str]] = {}
    for name, address in pairs:
        by_name.setdefault(name, []).append(address)
    zones = {"node-0": "zone-a", "n1": "zone-a", "n2": "zone-b"}
    return [
        NodeAddress(name, tuple(addresses), zones.get(name, ""))
        for name, addresses in by_name.items()
    ]


def forward(address: str, at: float) -> bool:
    """STAMP: n2's packets are lost on the way out every fourth probe; n1's replies are
    late every other probe (respond), so its losses are on the way back; n3's outage
    takes both ways."""
    if address == f"{V4}.4" and 1001.55 <= at < 1005.05:
        return False
    return not (address == f"{V4}.3" and round(at * 10) % 4 == 0)


def scripted_exposition(
    per_peer_histogram: bool, directory: Path, full_pair_metrics: bool = True
) -> Exposition:
    clock = ScriptedClock()
    # Path MTU: n2's IPv4 path drops packets over 1400 bytes, the kernel will not send
    # more than 1280 to n5; the size probes are 1500 bytes, every 0.5 s.
    sock = ScriptedSocket(
        clock,
        respond,
        unreachable=frozenset({f"{V4}.7"}),
        black_holes={f"{V4}.3": 1400},
        refused={f"{V4}.6": 1280},
    )
    stamp_sock = ScriptedStampSocket(clock, forward, respond, frozenset({f"{V4}.7"}))
    stamp = StampSender({4: stamp_sock, 6: stamp_sock}, 8762, 0.05, "node-0", ssid=7)
    table = PeerTable(window=5, per_peer_histogram=per_peer_histogram, stamp=True, large=True)
    prober = Prober(
        table,
        {4: sock, 6: sock},
        interval=0.1,
        timeout=0.05,
        payload_size=56,
        phase=0.0,
        clock=clock,
        node_name="node-0",
        token=b"golden!!",
        stamp=stamp,
        size_probes=SizeProbes(0.5, route_mtu=lambda address, family: 1500),
    )
    table._on_change = prober.peers_changed
    sink = NodeSink(table, "node-0", ping_self=False, max_peers=0)
    state = DiscoveryState("static", "node-0")
    discovery = StaticDiscovery([], sink, state)
    common = [("n1", f"{V4}.2"), ("n2", f"{V4}.3"), ("n2", f"{V6}3"), ("n5", f"{V4}.6")]
    sink.update(nodes(("node-0", f"{V4}.1"), *common, ("n4", f"{V4}.5"), ("n6", f"{V4}.7")))
    with patch.object(external, "resolve", lambda host: [f"{V4}.100"]):
        targets = [ExternalTarget(host="dns.test", name="dns"), ExternalTarget(host="no.test")]
        resolver = ExternalTargets(targets, table, interval=60, node_name="node-0")
        with patch.object(
            external, "resolve", lambda host: [f"{V4}.100"] if host == "dns.test" else []
        ):
            asyncio.run(resolver.resolve_all())
    drive(prober, clock, 1.0)
    # n4 leaves (its series must vanish), n3 joins; a bad read is counted.
    sink.update(nodes(("node-0", f"{V4}.1"), *common, ("n3", f"{V4}.4"), ("n6", f"{V4}.7")))
    state.failed("scripted")
    drive(prober, clock, 4.5)  # n3's outage, then a reply
    state.succeeded()
    state.last_success = 1_800_000_000.0
    writer = TextfileWriter(directory / "node-ping_node-0.prom", lambda a: (b"", ""), 10, "node-0")
    # The HTTP part's counters, scripted: what it collects is tested, not serving.
    server: Any = SimpleNamespace(closed={"evicted": 2, "refused": 0})
    tls: Any = SimpleNamespace(reload_errors=1)
    authorizer: Any = SimpleNamespace(decisions={200: 5, 401: 2, 403: 1, 503: 0})
    http = HttpServer(server, "node-0", tls, authorizer)
    # The reflector's counters, scripted: what it answers is tests/test_stamp.py's.
    reflector = Reflector({}, "node-0")
    reflector.counts.update(reflected=40, unknown_source=2, malformed=1)
    supervisor = Supervisor("node-0")
    for component in (discovery, resolver, prober, reflector, writer, http):
        supervisor.components.append(component)
        supervisor.restarts[component.name] = 0
    registry = CollectorRegistry()
    registry.register(
        AgentCollector("node-0", "unprivileged", table, supervisor, python_version="3.x")
    )
    return Exposition(table, "node-0", registry, full_pair_metrics)


@pytest.mark.parametrize(
    "accept, per_peer_histogram, golden",
    [
        ("", False, "metrics.prom"),
        ("application/openmetrics-text; version=1.0.0", False, "metrics.openmetrics"),
        ("", True, "metrics-per-peer-histogram.prom"),
    ],
)
def test_exposition_matches_the_golden_file(
    accept: str, per_peer_histogram: bool, golden: str, tmp_path: Path
) -> None:
    body, _ = scripted_exposition(per_peer_histogram, tmp_path).render(accept)
    path = GOLDEN / golden
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_bytes(body)
    assert body.decode() == path.read_text()


def test_reduced_pair_metrics_leave_out_exactly_the_full_only_families(tmp_path: Path) -> None:
    """The default (--pair-metrics reduced) is the golden file without the four
    families no rule or dashboard reads — every other byte the same — and the
    external targets keep their min/max/mdev."""
    full, _ = scripted_exposition(False, tmp_path).render("")
    reduced, _ = scripted_exposition(False, tmp_path, False).render("")
    left_out = {"kube_node_ping_rtt_min", "kube_node_ping_rtt_max", "kube_node_ping_rtt_mdev",
                "kube_node_ping_stamp_rtt_milliseconds_total"}  # fmt: skip
    assert left_out == FULL_ONLY_PAIR_FAMILIES

    def family(line: str) -> str:
        return line.split()[2] if line.startswith("#") else line.split("{")[0]

    expected = [line for line in full.decode().splitlines() if family(line) not in left_out]
    assert reduced.decode().splitlines() == expected
    assert "external_ping_rtt_min{" in reduced.decode()
    assert len(full.decode().splitlines()) - len(expected) > 4 * 3  # really left some out
