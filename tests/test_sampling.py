"""--max-peers: stable ring sampling, exactly K probers per node, small reshuffles."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from exporter.sampling import MIN_SAMPLED_PEERS, choose_peers, peers_per_node

NODES = [f"node-{i:03d}" for i in range(200)]


def all_choices(nodes: list[str], k: int) -> dict[str, set[str]]:
    return {n: choose_peers(n, nodes, k) for n in nodes}


def test_zero_or_small_cluster_means_everyone() -> None:
    assert choose_peers("a", ["a", "b", "c"], 0) == {"b", "c"}
    assert choose_peers("a", ["a", "b", "c"], 5) == {"b", "c"}


def test_each_node_probes_k_and_is_probed_by_k() -> None:
    choices = all_choices(NODES, 10)
    assert all(len(peers) == 10 and n not in peers for n, peers in choices.items())
    probed_by = Counter(peer for peers in choices.values() for peer in peers)
    assert set(probed_by.values()) == {10}
    assert set(probed_by) == set(NODES)


def test_choice_is_stable_whatever_the_order_and_across_runs() -> None:
    shuffled = NODES[:]
    random.Random(7).shuffle(shuffled)
    assert all_choices(NODES, 10) == all_choices(shuffled, 10)
    # Fixed by the names alone (a hash, not Python's randomised hash()).
    assert choose_peers("node-000", NODES, 3) == choose_peers("node-000", list(reversed(NODES)), 3)


def test_a_node_joining_or_leaving_changes_few_choices() -> None:
    k = 10
    before = all_choices(NODES, k)
    after_join = all_choices([*NODES, "node-new"], k)
    changed = [n for n in NODES if before[n] != after_join[n]]
    assert len(changed) <= k  # only the new node's K ring predecessors
    after_leave = all_choices([n for n in NODES if n != "node-050"], k)
    changed = [n for n in NODES if n != "node-050" and before[n] != after_leave[n]]
    assert len(changed) <= k
    assert all(len(before[n] ^ after_leave[n]) <= 2 for n in changed)  # one swapped out, one in


def test_self_outside_the_list_still_gets_k() -> None:
    assert len(choose_peers("not-listed", NODES, 10)) == 10


def test_the_pair_budget_bounds_the_cluster_and_keeps_small_ones_whole() -> None:
    """--max-pairs B: a full mesh while N·(N−1) ≤ B; then B/N per node, never under
    MIN_SAMPLED_PEERS, so the cluster's pairs stay within max(B, N·10)."""
    budget = 10000
    assert peers_per_node(100, 0, budget) == 0  # 9900 pairs: all
    assert peers_per_node(101, 0, budget) == 99  # 10100 > B: 10000 // 101
    assert peers_per_node(300, 0, budget) == 33
    assert peers_per_node(1000, 0, budget) == MIN_SAMPLED_PEERS == 10
    assert peers_per_node(5000, 0, budget) == 10
    for nodes in (2, 50, 101, 150, 300, 999, 1000, 5000):
        k = peers_per_node(nodes, 0, budget) or nodes - 1
        assert nodes * k <= max(budget, nodes * MIN_SAMPLED_PEERS)
    assert peers_per_node(5000, 0, 0) == 0  # no budget: all
    assert peers_per_node(50, 7, budget) == 7  # --max-peers wins


def zoned(nodes: list[str], shares: tuple[float, ...]) -> dict[str, str]:
    """Nodes spread over zones in these shares, in a shuffled order (not by name)."""
    order = nodes[:]
    random.Random(3).shuffle(order)
    zones, start = {}, 0
    for i, share in enumerate(shares):
        end = len(order) if i == len(shares) - 1 else start + round(share * len(order))
        zones.update({n: f"zone-{i}" for n in order[start:end]})
        start = end
    return zones


def zoned_choices(nodes: list[str], k: int, zones: dict[str, str]) -> dict[str, set[str]]:
    return {n: choose_peers(n, nodes, k, zones) for n in nodes}


@pytest.mark.parametrize("shares", [(0.34, 0.33, 0.33), (0.9, 0.05, 0.05), (0.5, 0.3, 0.1, 0.1)])
def test_with_zones_every_node_probes_and_is_probed_from_every_zone(
    shares: tuple[float, ...],
) -> None:
    """The plain ring misses a small zone for many nodes (a 5 % zone: most of them);
    the top-ups make every node's peers and every node's sources span all zones,
    and every node keeps at least its K ring sources."""
    k = 10
    zones = zoned(NODES, shares)
    plain = all_choices(NODES, k)
    assert any({zones[p] for p in peers} != set(zones.values()) for peers in plain.values())
    choices = zoned_choices(NODES, k, zones)
    sources: dict[str, set[str]] = {n: set() for n in NODES}
    for node, peers in choices.items():
        assert peers >= plain[node] and node not in peers
        assert {zones[p] for p in peers} == set(zones.values()), node
        for peer in peers:
            sources[peer].add(node)
    for node, by in sources.items():
        assert {zones[s] for s in by} == set(zones.values()), node
        assert len(by) >= k
    pairs = sum(len(p) for p in choices.values())
    assert pairs <= len(NODES) * k * 1.3  # what the top-ups cost, a skewed cluster's worst


def test_zone_top_ups_are_as_stable_as_the_ring() -> None:
    k = 10
    zones = zoned(NODES, (0.6, 0.3, 0.1))
    before = zoned_choices(NODES, k, zones)
    after = zoned_choices([*NODES, "node-new"], k, {**zones, "node-new": "zone-2"})
    changed = [n for n in NODES if before[n] != after[n]]
    assert len(changed) <= 3 * k, len(changed)
    assert sum(len(before[n] ^ after[n]) for n in changed) <= 6 * k


def test_zones_are_not_topped_up_past_k_or_with_one_zone() -> None:
    """More zones than K (a label too fine to be a zone) or a single zone: the ring alone."""
    k = 10
    one = dict.fromkeys(NODES, "zone-a")
    many = {n: f"rack-{i % 20}" for i, n in enumerate(NODES)}
    partly = {n: "zone-a" for n in NODES[:100]}  # the rest unknown: not a zone
    plain = all_choices(NODES, k)
    assert zoned_choices(NODES, k, one) == plain
    assert zoned_choices(NODES, k, many) == plain
    assert zoned_choices(NODES, k, partly) == plain
