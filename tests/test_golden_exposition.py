"""Golden exposition: a scripted prober run renders exactly tests/golden/*.prom.

As node_exporter's fixtures: the whole /metrics text (both formats) for a fixed
sequence of replies, losses and peer changes on a scripted clock
(tests/scripted.py), so any change to names, labels, help, order or values
shows up as a diff. Needs no root. After an intended change, regenerate with
``UPDATE_GOLDEN=1 pytest tests/test_golden_exposition.py`` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from exporter.engine import Prober
from exporter.exposition import Exposition
from exporter.metrics import AgentCollector
from exporter.peers import PeerKey, PeerKind, PeerTable
from exporter.supervisor import Supervisor

from .scripted import ScriptedClock, ScriptedSocket, drive

GOLDEN = Path(__file__).parent / "golden"
V4, V6 = "198.18.0", "fd00:198:18::"


def respond(address: str, at: float) -> float | None:
    """n1 answers every other probe too late (80 ms, timeout 50 ms) and the rest in 0.5 ms,
    n2 in 1.5 ms on both families, dns in 12 ms, others in 0.25 ms; n5 never answers;
    plus 10 µs per 100 ms of the clock (some spread). n6 has no route (send errors)."""
    spread = round(at * 10) % 3 * 0.00001
    if address == f"{V4}.2":
        return 0.08 if round(at * 10) % 2 else 0.0005 + spread
    if address == f"{V4}.6":
        return None
    if address in (f"{V4}.3", f"{V6}3"):
        return 0.0015 + spread
    if address == f"{V4}.100":
        return 0.012 + spread
    return 0.00025 + spread


def node(name: str, address: str) -> PeerKey:
    return PeerKey(PeerKind.NODE, name, address)


def scripted_exposition(per_peer_histogram: bool) -> Exposition:
    clock = ScriptedClock()
    sock = ScriptedSocket(clock, respond, unreachable=frozenset({f"{V4}.7"}))
    table = PeerTable(window=5, per_peer_histogram=per_peer_histogram)
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
    )
    table._on_change = prober.peers_changed
    table.replace(
        PeerKind.NODE,
        [
            node("n1", f"{V4}.2"),
            node("n2", f"{V4}.3"),
            node("n2", f"{V6}3"),
            node("n4", f"{V4}.5"),
            node("n5", f"{V4}.6"),
            node("n6", f"{V4}.7"),
        ],
    )
    table.replace(PeerKind.EXTERNAL, [PeerKey(PeerKind.EXTERNAL, "dns", f"{V4}.100", "dns.test")])
    table.discovered_nodes = 6
    drive(prober, clock, 1.0)
    # n4 leaves (its series must vanish), n3 joins; then everything in flight resolves.
    table.replace(
        PeerKind.NODE,
        [
            node("n1", f"{V4}.2"),
            node("n2", f"{V4}.3"),
            node("n2", f"{V6}3"),
            node("n3", f"{V4}.4"),
            node("n5", f"{V4}.6"),
            node("n6", f"{V4}.7"),
        ],
    )
    drive(prober, clock, 0.5)
    supervisor = Supervisor("node-0")
    supervisor.components.append(prober)
    supervisor.restarts["prober"] = 0
    registry = CollectorRegistry()
    registry.register(
        AgentCollector("node-0", "unprivileged", table, supervisor, python_version="3.x")
    )
    return Exposition(table, "node-0", registry)


@pytest.mark.parametrize(
    "accept, per_peer_histogram, golden",
    [
        ("", False, "metrics.prom"),
        ("application/openmetrics-text; version=1.0.0", False, "metrics.openmetrics"),
        ("", True, "metrics-per-peer-histogram.prom"),
    ],
)
def test_exposition_matches_the_golden_file(
    accept: str, per_peer_histogram: bool, golden: str
) -> None:
    body, _ = scripted_exposition(per_peer_histogram).render(accept)
    path = GOLDEN / golden
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_bytes(body)
    assert body.decode() == path.read_text()
