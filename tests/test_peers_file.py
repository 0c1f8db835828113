"""File discovery at run time: any bad peers file leaves the last good list exactly
in force, is counted once per episode, and turns discovery_up to 0 (defect 4)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from exporter.discovery import DiscoveryState, NodeSink
from exporter.discovery.file import PeersFileDiscovery, PeersFileError, read_peers_file
from exporter.engine import Prober
from exporter.peers import PeerTable

from .scripted import ScriptedClock, ScriptedSocket

BAD_FILES: dict[str, bytes] = {
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,
    "lone surrogate in a name": b'[{"name": "a\\udcff", "ipAddress": "198.18.0.1"}]',
    "newline in a name": b'[{"name": "a\\nb", "ipAddress": "198.18.0.1"}]',
    "not a node name": b'[{"name": "../x", "ipAddress": "198.18.0.1"}]',
    "not JSON": b"{nope",
    "not UTF-8": b'[{"name": "\xff", "ipAddress": "198.18.0.1"}]',
    "bad address": b'[{"name": "a", "ipAddress": "198.18.0.300"}]',
    "an object": b'{"name": "a"}',
    "an entry that is a list": b"[[1]]",
    "a number for a name": b'[{"name": 5, "ipAddress": "198.18.0.1"}]',
    "a zone that is no label value": b'[{"name": "a", "ipAddress": "198.18.0.1", "zone": "a b"}]',
    "a number for a zone": b'[{"name": "a", "ipAddress": "198.18.0.1", "zone": 3}]',
}


def peers_json(**nodes: str) -> bytes:
    return json.dumps([{"name": n, "ipAddress": a} for n, a in nodes.items()]).encode()


def scheduled(prober: Prober) -> set[str]:
    """The nodes the prober will send to: its schedule, not just the table."""
    prober.tick(prober.clock.monotonic())
    return {entry[1].key.name for entry in prober._schedule}


@pytest.mark.parametrize("problem", list(BAD_FILES))
def test_a_bad_file_keeps_the_last_good_list(
    problem: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "nodes.json"
    path.write_bytes(peers_json(a="198.18.0.1", b="198.18.0.2", c="198.18.0.3"))
    table = PeerTable(window=5, per_peer_histogram=False)
    clock = ScriptedClock()
    prober = Prober(
        table, {4: ScriptedSocket(clock, lambda a, t: 0.001)}, 1.0, 0.5, 56, clock=clock
    )
    table._on_change = prober.peers_changed
    state = DiscoveryState("file", "me")
    discovery = PeersFileDiscovery(
        path, 0.02, NodeSink(table, "me", False, 0), state, read_peers_file(path)
    )

    async def until(check: Callable[[], bool]) -> None:
        for _ in range(200):
            if check():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("timed out")

    async def scenario() -> None:
        task = asyncio.create_task(discovery.run())
        path.write_bytes(peers_json(a="198.18.0.1", b="198.18.0.2"))  # c leaves
        await until(lambda: {p.key.name for p in table.snapshot()} == {"a", "b"})
        path.write_bytes(BAD_FILES[problem])
        await until(lambda: not state.up)
        await asyncio.sleep(0.1)  # several more polls of the same bad file
        assert state.errors == 1  # once per episode
        failing = [r for r in caplog.records if r.getMessage().startswith("discovery failing")]
        assert len(failing) == 1  # one log line
        assert {p.key.name for p in table.snapshot()} == {"a", "b"}
        assert scheduled(prober) == {"a", "b"}  # c is not probed behind its vanished series
        assert not task.done()  # the watcher never died (and so never restarted)
        path.write_bytes(peers_json(a="198.18.0.1"))
        await until(lambda: state.up)
        assert scheduled(prober) == {"a"}
        path.write_bytes(BAD_FILES[problem])
        await until(lambda: not state.up)
        assert state.errors == 2
        task.cancel()

    asyncio.run(scenario())
    samples = {m.name: m.samples[0].value for m in state.collect()}
    assert samples["kube_node_ping_discovery_up"] == 0
    assert samples["kube_node_ping_discovery_errors"] == 2


def test_zones_are_read_and_this_node_reports_its_own(tmp_path: Path) -> None:
    path = tmp_path / "nodes.json"
    entries = [
        {"name": "me", "ipAddress": "198.18.0.1", "zone": "zone-a"},
        {"name": "b", "ipAddress": "198.18.0.2", "zone": "eu-west-1b"},
        {"name": "c", "ipAddress": "198.18.0.3"},
    ]
    path.write_text(json.dumps(entries))
    _, nodes = read_peers_file(path)
    assert [(n.name, n.zone) for n in nodes] == [("me", "zone-a"), ("b", "eu-west-1b"), ("c", "")]
    sink = NodeSink(PeerTable(window=5, per_peer_histogram=False), "me", False, 0)
    sink.update(nodes)
    info = {m.name: m.samples for m in sink.collect()}["kube_node_ping_node_info"]
    assert [(s.labels, s.value) for s in info] == [({"source_node": "me", "zone": "zone-a"}, 1)]


@pytest.mark.parametrize(
    ("zone", "problem"),
    [("a b", "is not a Kubernetes label value"), ("x" * 64, "is not a Kubernetes label value"),
     (3, "'zone' is not a string")],
)  # fmt: skip
def test_a_bad_zone_is_named_with_its_entry(tmp_path: Path, zone: object, problem: str) -> None:
    path = tmp_path / "nodes.json"
    path.write_text(json.dumps([{"name": "a", "ipAddress": "198.18.0.1", "zone": zone}]))
    with pytest.raises(PeersFileError, match=f"entry 1.*{problem}"):
        read_peers_file(path)
