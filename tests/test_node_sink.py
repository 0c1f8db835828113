"""Rules every discovery source shares: self excluded, --ping-self, --max-peers, diffs."""

from __future__ import annotations

from exporter.discovery import NodeSink
from exporter.peers import NodeAddress, PeerKind, PeerTable


def nodes(count: int) -> list[NodeAddress]:
    return [NodeAddress(f"n{i}", (f"198.18.128.{i + 1}",)) for i in range(count)]


def names(table: PeerTable) -> set[str]:
    return {p.key.name for p in table.snapshot() if p.key.kind is PeerKind.NODE}


def test_self_is_excluded_unless_ping_self() -> None:
    table = PeerTable(window=5, per_peer_histogram=False)
    sink = NodeSink(table, "n0", ping_self=False, max_peers=0)
    sink.update(nodes(3))
    assert names(table) == {"n1", "n2"}
    assert sink.discovered_nodes == 2
    NodeSink(table, "n0", ping_self=True, max_peers=0).update(nodes(3))
    assert names(table) == {"n0", "n1", "n2"}


def test_max_peers_samples_and_counts_what_was_discovered() -> None:
    table = PeerTable(window=5, per_peer_histogram=False)
    sink = NodeSink(table, "n0", ping_self=False, max_peers=3)
    sink.update(nodes(10))
    assert len(names(table)) == 3 and "n0" not in names(table)
    assert sink.discovered_nodes == 9


def test_max_pairs_keeps_a_full_mesh_until_the_cluster_outgrows_it() -> None:
    """--max-pairs 300: 17 nodes (272 pairs) probe each other all; 18 (306) probe
    300 // 18 = 16 each, not all 17; 40 nodes probe 10 (never under
    MIN_SAMPLED_PEERS, though 300 // 40 = 7); an explicit --max-peers wins."""
    table = PeerTable(window=5, per_peer_histogram=False)
    sink = NodeSink(table, "n0", ping_self=False, max_peers=0, max_pairs=300)
    sink.update(nodes(17))
    assert len(names(table)) == 16
    sink.update(nodes(18))
    assert len(names(table)) == 16 and sink.discovered_nodes == 17
    sink.update(nodes(40))
    assert len(names(table)) == 10
    NodeSink(table, "n0", ping_self=False, max_peers=3, max_pairs=300).update(nodes(40))
    assert len(names(table)) == 3


def test_sampled_peers_span_the_zones_discovery_lists() -> None:
    """40 nodes, 3 of them in zone-b: with --max-peers 3 every agent probes zone-b
    too (the ring alone misses it for most), and its own zone is reported."""
    listed = [
        NodeAddress(n.name, n.addresses, "zone-b" if n.name in ("n5", "n17", "n30") else "zone-a")
        for n in nodes(40)
    ]
    zone_b_probed = 0
    for i in range(40):
        table = PeerTable(window=5, per_peer_histogram=False)
        sink = NodeSink(table, f"n{i}", ping_self=False, max_peers=3)
        sink.update(listed)
        assert {"n5", "n17", "n30"} & names(table), f"n{i}"
        assert sink.zone == ("zone-b" if i in (5, 17, 30) else "zone-a")
        zone_b_probed += len(names(table)) > 3
    assert zone_b_probed > 0


def test_unchanged_peers_keep_their_statistics_and_change_is_signalled() -> None:
    changes: list[int] = []
    table = PeerTable(window=5, per_peer_histogram=False, on_change=lambda: changes.append(1))
    sink = NodeSink(table, "me", ping_self=False, max_peers=0)
    sink.update(nodes(3))
    kept = {p.key: p for p in table.snapshot()}
    kept_peer = next(p for p in kept.values() if p.key.name == "n1")
    kept_peer.stats.record_reply(1.0, 0)
    sink.update(nodes(3))
    assert len(changes) == 1  # the same snapshot again is no change
    sink.update(nodes(2))  # n2 leaves
    assert len(changes) == 2 and names(table) == {"n0", "n1"}
    survivor = next(p for p in table.snapshot() if p.key.name == "n1")
    assert survivor is kept_peer and survivor.stats.received == 1
    sink.update([NodeAddress("n1", ("198.18.128.99",))])  # new address: a new peer
    (moved,) = table.snapshot()
    assert moved.key.address == "198.18.128.99" and moved.stats.sent == 0
