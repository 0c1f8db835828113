"""Which nodes this node probes when a full mesh is too many (``--max-peers K``).

Consistent hashing on a ring: every node name gets a fixed position (a hash of
the name, so it is the same on every node, across restarts and rollouts), and
each node probes the K nodes that follow it on the ring. So every node probes
K and is probed by K others (when the cluster has more than K+1 nodes), exactly
while no zones are known; a node joining or leaving changes only the K
predecessors' choices (and, with zones, a few top-ups: see below).

Without ``--max-peers``, ``--max-pairs B`` bounds the whole cluster's pairs, and
with them what Prometheus stores and evaluates (docs/sizing.md): a full mesh while
N·(N−1) ≤ B, else K = B/N, never under MIN_SAMPLED_PEERS (below that a node's
verdict rests on too few sources). Every node computes K from the same node count,
so the ring's "probed by exactly K" holds once discovery agrees.

When discovery knows the nodes' zones (topology.kubernetes.io/zone), the ring's K
are topped up so that each node probes, and is probed by, at least one node of
every zone (while the cluster has no more zones than K): a node of each zone its
K miss, and for each node whose K ring predecessors miss a zone, one node of that
zone probes it too. The extra node is picked by a hash of the node on the zone's
own ring, so the top-ups are as stable as the ring and spread over the zone. A
zone cut off is then seen from both sides by every node, which the rules' zone
verdict reads (node_ping:zone_pair:cut); each node still has at least K sources.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Mapping

from .peers import stable_fraction

MIN_SAMPLED_PEERS = 10


def ring_position(node: str) -> float:
    return stable_fraction("ring", node)


def choose_peers(
    self_name: str, nodes: Iterable[str], max_peers: int, zones: Mapping[str, str] | None = None
) -> set[str]:
    """The names this node probes, self excluded. ``max_peers`` 0 means all;
    ``zones`` maps node names to their zones (missing or "": unknown)."""
    others = {n for n in nodes if n != self_name}
    if max_peers <= 0 or len(others) <= max_peers:
        return others
    ring = sorted([*others, self_name], key=lambda n: (ring_position(n), n))
    start = ring.index(self_name)
    chosen = {ring[(start + i) % len(ring)] for i in range(1, max_peers + 1)}
    return chosen | _zone_top_ups(self_name, ring, chosen, max_peers, zones or {})


def _zone_top_ups(
    self_name: str, ring: list[str], chosen: set[str], k: int, zones: Mapping[str, str]
) -> set[str]:
    """Peers beyond the ring's K (``chosen``) so that this node probes every zone and
    every node is probed from every zone (see the module's docstring)."""
    zone_of = {n: zones.get(n, "") for n in ring}
    members: dict[str, list[tuple[float, str]]] = {}  # each zone's own ring
    for name in ring:
        if zone_of[name]:
            members.setdefault(zone_of[name], []).append((stable_fraction("zone-ring", name), name))
    if not 2 <= len(members) <= k:
        return set()
    for zone_ring in members.values():
        zone_ring.sort()

    def pick(zone: str, chooser: str) -> str | None:
        """The node of ``zone`` after ``chooser``'s spot on the zone's ring (not itself)."""
        zone_ring = members[zone]
        at = bisect_right(zone_ring, (stable_fraction("zone-pick", chooser, zone), chooser))
        for step in range(2):
            name = zone_ring[(at + step) % len(zone_ring)][1]
            if name != chooser:
                return name
        return None

    covered = {zone_of[name] for name in chosen}
    extra = {pick(zone, self_name) for zone in members if zone not in covered}
    # Nodes whose K ring predecessors miss this node's zone, and for which this node
    # is the one of its zone picked: a window of K predecessors sliding along the ring.
    own = zone_of[self_name]
    if own:
        # ring[i - k] wraps round for i < k; the ring has k + 2 nodes at least (the
        # caller returns everybody otherwise), so a window never holds a node twice.
        window = Counter(zone_of[ring[i]] for i in range(-k, 0))  # ring[0]'s predecessors
        for i, node in enumerate(ring):
            if not window[own] and node != self_name and pick(own, node) == self_name:
                extra.add(node)
            window[zone_of[ring[i - k]]] -= 1
            window[zone_of[node]] += 1
    return {name for name in extra if name is not None}


def peers_per_node(nodes: int, max_peers: int, max_pairs: int) -> int:
    """K for a cluster of ``nodes`` (this one included); 0 means all."""
    if max_peers > 0:
        return max_peers
    if max_pairs <= 0 or nodes * (nodes - 1) <= max_pairs:
        return 0
    return max(MIN_SAMPLED_PEERS, max_pairs // nodes)
