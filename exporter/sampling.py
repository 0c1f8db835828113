"""Which nodes this node probes when a full mesh is too many (``--max-peers K``).

Consistent hashing on a ring: every node name gets a fixed position (a hash of
the name, so it is the same on every node, across restarts and rollouts), and
each node probes the K nodes that follow it on the ring. So every node probes
exactly K and is probed by exactly K others (when the cluster has more than K+1
nodes); a node joining or leaving changes only the K predecessors' choices.

Without ``--max-peers``, ``--max-pairs B`` bounds the whole cluster's pairs, and
with them what Prometheus stores and evaluates (docs/sizing.md): a full mesh while
N·(N−1) ≤ B, else K = B/N, never under MIN_SAMPLED_PEERS (below that a node's
verdict rests on too few sources). Every node computes K from the same node count,
so the ring's "probed by exactly K" holds once discovery agrees.
"""

from __future__ import annotations

from collections.abc import Iterable

from .peers import stable_fraction

MIN_SAMPLED_PEERS = 10


def ring_position(node: str) -> float:
    return stable_fraction("ring", node)


def choose_peers(self_name: str, nodes: Iterable[str], max_peers: int) -> set[str]:
    """The names this node probes, self excluded. ``max_peers`` 0 means all."""
    others = {n for n in nodes if n != self_name}
    if max_peers <= 0 or len(others) <= max_peers:
        return others
    ring = sorted([*others, self_name], key=lambda n: (ring_position(n), n))
    start = ring.index(self_name)
    return {ring[(start + i) % len(ring)] for i in range(1, max_peers + 1)}


def peers_per_node(nodes: int, max_peers: int, max_pairs: int) -> int:
    """K for a cluster of ``nodes`` (this one included); 0 means all."""
    if max_peers > 0:
        return max_peers
    if max_pairs <= 0 or nodes * (nodes - 1) <= max_pairs:
        return 0
    return max(MIN_SAMPLED_PEERS, max_pairs // nodes)
