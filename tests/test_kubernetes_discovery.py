"""Kubernetes discovery against an HTTP server speaking Node list/watch, scripted.

The server is a fake (tests/fake_apiserver.py) because these tests script what a
real kube-apiserver does only now and then: a watch dropped mid-stream, a 410 Gone
on resume after compaction, a stalled connection. The agent side is the real one
(exporter/kubeapi.py); tests/test_kubeapi.py runs it against a real API server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from exporter.discovery import DiscoveryState, NodeSink
from exporter.discovery.kubernetes import KubernetesDiscovery, node_addresses
from exporter.peers import NodeAddress, PeerKind, PeerTable

from .fake_apiserver import FakeApiServer

V4 = "InternalIP"


def peers_of(table: PeerTable) -> set[tuple[str, str]]:
    return {(p.key.name, p.key.address) for p in table.snapshot() if p.key.kind is PeerKind.NODE}


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


RUNNING: list[asyncio.Task[None]] = []  # ended by asyncio.run() at the end of each test


def start_discovery(
    fake: FakeApiServer, tmp_path: Path, selector: str = "", types: list[str] | None = None
) -> tuple[PeerTable, DiscoveryState, KubernetesDiscovery]:
    table = PeerTable(window=30, per_peer_histogram=False)
    state = DiscoveryState("kubernetes")
    discovery = KubernetesDiscovery(
        NodeSink(table, "me", ping_self=False, max_peers=0),
        state,
        types or [V4],
        selector,
        fake.kubeconfig(tmp_path / "kubeconfig"),
    )
    RUNNING.append(asyncio.get_running_loop().create_task(discovery.run()))
    return table, state, discovery


def test_list_watch_follows_nodes(tmp_path: Path) -> None:
    fake = FakeApiServer()
    fake.put_node("me", [(V4, "198.18.128.1")])
    fake.put_node("a", [(V4, "198.18.128.2"), ("Hostname", "a")])
    fake.put_node(
        "dual", [(V4, "198.18.128.3"), (V4, "fd00:198:18:1::3"), ("ExternalIP", "1.2.3.4")]
    )
    fake.put_node("no-address", [("Hostname", "no-address")])
    fake.put_node("going", [(V4, "198.18.128.4")], deleting=True)

    async def scenario() -> None:
        table, state, discovery = start_discovery(fake, tmp_path)
        try:
            await until(lambda: state.up, 5, "first sync")
            # Self, address-less and deleting nodes are not peers; dual-stack is two peers.
            assert peers_of(table) == {
                ("a", "198.18.128.2"),
                ("dual", "198.18.128.3"),
                ("dual", "fd00:198:18:1::3"),
            }
            assert discovery.sink.discovered_nodes == 2

            fake.put_node("new", [(V4, "198.18.128.5")])
            await until(lambda: ("new", "198.18.128.5") in peers_of(table), 2, "added node")
            fake.delete_node("a")
            await until(lambda: not any(n == "a" for n, _ in peers_of(table)), 2, "deleted node")
            fake.put_node("new", [(V4, "198.18.128.6")])  # address change moves the probes
            await until(
                lambda: (
                    ("new", "198.18.128.6") in peers_of(table)
                    and ("new", "198.18.128.5") not in peers_of(table)
                ),
                2,
                "moved address",
            )
            fake.put_node("new", [(V4, "198.18.128.6")], deleting=True)  # finalizer + delete
            await until(
                lambda: not any(n == "new" for n, _ in peers_of(table)),
                2,
                "node with deletionTimestamp dropped",
            )

            lists, watches = fake.lists, fake.watches
            fake.drop_watches()  # connection lost mid-stream: resume from the last version
            await until(lambda: fake.watches > watches, 5, "watch resumed after a drop")
            fake.put_node("after-drop", [(V4, "198.18.128.7")])
            await until(
                lambda: ("after-drop", "198.18.128.7") in peers_of(table),
                3,
                "events after reconnect",
            )
            assert fake.lists == lists, "a dropped watch resumes; it must not relist every node"

            lists = fake.lists
            fake.compact()  # history gone: resuming gets 410 Gone, which relists at once
            await until(lambda: fake.lists > lists, 3, "relist after 410 Gone")
            fake.put_node("after-410", [(V4, "198.18.128.8")])
            await until(
                lambda: ("after-410", "198.18.128.8") in peers_of(table), 3, "events after 410"
            )
            errors_before = state.errors

            known = peers_of(table)
            fake.down = True
            fake.drop_watches()
            await until(lambda: not state.up, 5, "discovery reported failing")
            assert state.errors > errors_before
            assert peers_of(table) == known  # keeps probing the last known peers
            fake.down = False
            fake.put_node("after-outage", [(V4, "198.18.128.9")])
            await until(
                lambda: state.up and ("after-outage", "198.18.128.9") in peers_of(table),
                10,
                "resync after the outage",
            )
        finally:
            discovery.stop()

    with fake.running():
        asyncio.run(scenario())


def test_selector_and_address_types(tmp_path: Path) -> None:
    fake = FakeApiServer()
    fake.put_node(
        "worker", [(V4, "198.18.128.1"), ("ExternalIP", "198.18.200.1")], labels={"role": "worker"}
    )
    fake.put_node("infra", [(V4, "198.18.128.2")], labels={"role": "infra"})

    async def scenario() -> None:
        table, state, discovery = start_discovery(
            fake, tmp_path, selector="role=worker", types=["InternalIP", "ExternalIP"]
        )
        try:
            await until(lambda: state.up, 5, "first sync")
            assert peers_of(table) == {("worker", "198.18.128.1"), ("worker", "198.18.200.1")}
            fake.put_node("worker-2", [(V4, "198.18.128.3")], labels={"role": "worker"})
            fake.put_node("infra-2", [(V4, "198.18.128.4")], labels={"role": "infra"})
            await until(lambda: ("worker-2", "198.18.128.3") in peers_of(table), 2, "worker-2")
            assert not any(n.startswith("infra") for n, _ in peers_of(table))
        finally:
            discovery.stop()

    with fake.running():
        asyncio.run(scenario())


def test_a_node_carries_its_topology_zone() -> None:
    def node(labels: dict[str, str]) -> dict[str, object]:
        return {
            "metadata": {"name": "n1", "labels": labels},
            "status": {"addresses": [{"type": V4, "address": "198.18.128.1"}]},
        }

    zone = "topology.kubernetes.io/zone"
    legacy = "failure-domain.beta.kubernetes.io/zone"
    assert node_addresses(node({zone: "eu-1a", legacy: "old"}), [V4]) == NodeAddress(
        "n1", ("198.18.128.1",), "eu-1a"
    )
    assert node_addresses(node({legacy: "old"}), [V4]).zone == "old"  # type: ignore[union-attr]
    assert node_addresses(node({}), [V4]).zone == ""  # type: ignore[union-attr]
