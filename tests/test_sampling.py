"""--max-peers: stable ring sampling, exactly K probers per node, small reshuffles."""

from __future__ import annotations

import random
from collections import Counter

from exporter.sampling import choose_peers

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
