"""--max-peers: stable ring sampling, exactly K probers per node, small reshuffles."""

from __future__ import annotations

import random
from collections import Counter

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
