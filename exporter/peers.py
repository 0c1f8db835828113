"""The peer table: what this agent probes right now, and each peer's statistics.

Discovery sources hand the table complete snapshots ("these are the nodes now");
the table diffs them against what it holds. A peer that leaves takes its
statistics with it, so its series vanish from the next scrape or textfile.
A peer is one (kind, name, address): a dual-stack node is two peers, and a
node whose address changes is a new peer.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum

from prometheus_client.core import HistogramMetricFamily, Metric

from .metric_table import EXTERNAL_RTT, NODE_RTT, PEER_RTT, PEERS
from .stats import Histogram, LargeStats, PeerStats, StampStats

log = logging.getLogger(__name__)


class PeerKind(StrEnum):
    NODE = "node"
    EXTERNAL = "external"


@dataclass(frozen=True, order=True)
class PeerKey:
    """Identity of one probed address."""

    kind: PeerKind
    name: str  # node name, or the external target's name
    address: str  # IP address, normalised (ipaddress.ip_address(...).compressed)
    host: str = ""  # external targets: the configured host (IP or DNS name)
    family: int = field(init=False, compare=False)  # 4 or 6, derived from address

    def __post_init__(self) -> None:
        object.__setattr__(self, "family", ipaddress.ip_address(self.address).version)


@dataclass
class Peer:
    key: PeerKey
    stats: PeerStats
    # Stable position in the probing cycle, in [0, 1): spreads sends evenly.
    offset: float = field(default=0.0)
    # The STAMP session towards the node's reflector (nodes only, when STAMP is on).
    stamp: StampStats | None = None
    # The path-MTU probes (nodes only, when size probes are on).
    large: LargeStats | None = None


def stable_fraction(*parts: str) -> float:
    """A number in [0, 1) from the parts, equal on every node and every restart."""
    digest = hashlib.blake2b("\x00".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class NodeAddress:
    """One node as discovery sees it: a name, its usable addresses and its topology
    zone ("" when unknown), which the agent reports for its own node so that the
    rules can tell a zone split from node faults."""

    name: str
    addresses: tuple[str, ...]
    zone: str = ""


class PeerTable:
    """Current peers by key. Written only on the asyncio loop; read from any thread
    through :meth:`snapshot` (a list copy, atomic under the GIL)."""

    def __init__(
        self,
        window: int,
        per_peer_histogram: bool,
        on_change: Callable[[], None] | None = None,
        stamp: bool = False,
        large: bool = False,
    ) -> None:
        self._window = window
        self._stamp = stamp  # node peers get a STAMP session
        self._large = large  # node peers get path-MTU probes
        self._per_peer_histogram = per_peer_histogram
        self._peers: dict[PeerKey, Peer] = {}
        # RTT histogram over all peers of a kind (kube_node_ping_rtt_seconds, ...).
        self.histograms = {kind: Histogram() for kind in PeerKind}
        self._on_change = on_change

    def snapshot(self) -> list[Peer]:
        return list(self._peers.values())

    def __len__(self) -> int:
        return len(self._peers)

    def count(self, kind: PeerKind) -> int:
        return sum(1 for key in list(self._peers) if key.kind is kind)

    def replace(self, kind: PeerKind, keys: Iterable[PeerKey]) -> bool:
        """Make the peers of ``kind`` exactly ``keys``. Returns True when anything changed.

        All or nothing: the new table is built aside and swapped in one step, so an
        error part-way leaves the table (and the prober's schedule) as they were.
        """
        wanted = set(keys)
        current = {k for k in self._peers if k.kind is kind}
        removed = current - wanted
        added = wanted - current
        if not removed and not added:
            return False
        peers = {k: p for k, p in self._peers.items() if k not in removed}
        for key in sorted(added):
            peers[key] = Peer(
                key=key,
                stats=PeerStats(self._window, self.histograms[key.kind], self._per_peer_histogram),
                offset=stable_fraction(key.kind.value, key.name, key.address),
                stamp=StampStats() if self._stamp and key.kind is PeerKind.NODE else None,
                large=LargeStats() if self._large and key.kind is PeerKind.NODE else None,
            )
        self._peers = peers
        log.info(
            "peers changed",
            extra={
                "kind": kind.value,
                "added": len(added),
                "removed": len(removed),
                "total": len(peers),
            },
        )
        if self._on_change is not None:
            self._on_change()
        return True

    def collect(self, node_name: str) -> Iterator[Metric]:
        """The table's own families; the per-peer series are exposition.PeerRenderer's."""
        me = node_name
        if self._per_peer_histogram:
            per_peer = PEER_RTT.empty()
            for peer in self.snapshot():
                key = peer.key
                if key.kind is PeerKind.NODE and peer.stats.histogram is not None:
                    _add_histogram(per_peer, [me, key.name, key.address], peer.stats.histogram)
            yield per_peer
        for family, kind in ((NODE_RTT, PeerKind.NODE), (EXTERNAL_RTT, PeerKind.EXTERNAL)):
            aggregate = family.empty()
            _add_histogram(aggregate, [me], self.histograms[kind])
            yield aggregate
        yield PEERS.samples(((me, kind.value), self.count(kind)) for kind in PeerKind)


def _add_histogram(family: Metric, values: list[str], hist: Histogram) -> None:
    assert isinstance(family, HistogramMetricFamily)
    buckets, total = hist.cumulative()
    family.add_metric(values, buckets, total)
