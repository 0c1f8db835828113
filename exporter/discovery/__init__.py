"""Peer discovery: each source turns what it sees into a list of nodes.

Every source (kubernetes, file, static) produces complete snapshots of
:class:`~exporter.peers.NodeAddress`; :class:`NodeSink` applies the rules shared
by all of them (this node excluded unless ``--ping-self``, the ``--max-peers``
sample) and hands the result to the peer table. :class:`DiscoveryState` is what
the self-metrics and ``/readyz`` report about a source.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator

from prometheus_client.core import Metric

from ..metric_table import (
    DISCOVERED_NODES,
    DISCOVERY_ERRORS,
    DISCOVERY_LAST_SUCCESS,
    DISCOVERY_UP,
    NODE_INFO,
)
from ..peers import NodeAddress, PeerKey, PeerKind, PeerTable
from ..sampling import choose_peers, peers_per_node

log = logging.getLogger(__name__)


class DiscoveryState:
    """Health of one discovery source. Written on the asyncio loop only."""

    def __init__(self, source: str, node_name: str = "") -> None:
        self.source = source
        self.node_name = node_name
        self.up = False
        self.synced = asyncio.Event()  # set at the first good list/read
        self.last_success = 0.0  # unix time of the last good list/read
        self.errors = 0

    def succeeded(self) -> None:
        self.up = True
        self.synced.set()
        self.last_success = time.time()

    def failed(self, problem: str) -> None:
        self.up = False
        self.errors += 1
        log.warning(
            "discovery failing, keeping the last known peers",
            extra={"source": self.source, "problem": problem},
        )

    def collect(self) -> Iterator[Metric]:
        labels = (self.node_name, self.source)
        yield DISCOVERY_UP.sample(1 if self.up else 0, *labels)
        yield DISCOVERY_LAST_SUCCESS.sample(self.last_success, *labels)
        yield DISCOVERY_ERRORS.sample(self.errors, *labels)


class NodeSink:
    """Turns a node snapshot into this node's peer set."""

    def __init__(
        self, table: PeerTable, self_name: str, ping_self: bool, max_peers: int, max_pairs: int = 0
    ) -> None:
        self.table = table
        self.self_name = self_name
        self.ping_self = ping_self
        self.max_peers = max_peers
        self.max_pairs = max_pairs  # the cluster's, when max_peers is 0 (sampling.py)
        self.discovered_nodes = 0  # nodes known before sampling, self excluded
        self.zone = ""  # this node's zone, when discovery lists this node with one
        self.addresses: frozenset[str] = frozenset()  # every known node's, this one's too

    def knows(self, address: str) -> bool:
        """Whether ``address`` belongs to a node discovery lists (the STAMP reflector
        answers only those)."""
        return address in self.addresses

    def update(self, nodes: Iterable[NodeAddress]) -> None:
        by_name: dict[str, set[str]] = {}
        zones: dict[str, str] = {}
        for node in nodes:
            by_name.setdefault(node.name, set()).update(node.addresses)
            if node.zone:
                zones[node.name] = node.zone
        self.zone = zones.get(self.self_name, "")
        self.addresses = frozenset(a for addresses in by_name.values() for a in addresses)
        cluster = len(by_name.keys() | {self.self_name})
        k = peers_per_node(cluster, self.max_peers, self.max_pairs)
        chosen = choose_peers(self.self_name, by_name, k, zones)
        if self.ping_self and self.self_name in by_name:
            chosen.add(self.self_name)
        self.discovered_nodes = len(set(by_name) - {self.self_name})
        self.table.replace(
            PeerKind.NODE,
            (PeerKey(PeerKind.NODE, name, address) for name in chosen for address in by_name[name]),
        )

    def collect(self) -> Iterator[Metric]:
        yield DISCOVERED_NODES.sample(self.discovered_nodes, self.self_name)
        yield NODE_INFO.sample(1, self.self_name, self.zone)


class DiscoverySource:
    """What every discovery component reports: its health and the nodes it knows."""

    state: DiscoveryState
    sink: NodeSink

    def collect(self) -> Iterator[Metric]:
        yield from self.state.collect()
        yield from self.sink.collect()
